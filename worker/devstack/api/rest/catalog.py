"""What `/rest/v1` reads of the system catalogs: a table's columns and primary key,
the functions it may call and the foreign keys that resource embeds follow.

PostgREST keeps these in a schema cache; the local API looks them up per request,
inside the request's transaction, so a migration applied a moment ago is served.
Its error codes and messages (PGRST200-205) are PostgREST's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.errors import ApiError

#: The one schema served, as PostgREST's default `db-schemas`.
SCHEMA = "public"


def columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The columns of table (or view) in SCHEMA, in order, or PGRST205 (404)."""
    rows = conn.execute(
        "select a.attname from pg_catalog.pg_attribute a"
        " join pg_catalog.pg_class c on c.oid = a.attrelid"
        " where c.relnamespace = %s::regnamespace and c.relname = %s"
        " and c.relkind in ('r', 'v', 'm', 'p', 'f')"
        " and a.attnum > 0 and not a.attisdropped order by a.attnum",
        (SCHEMA, table),
    ).fetchall()
    if not rows:
        raise ApiError(404, "PGRST205",
                       f"Could not find the table '{SCHEMA}.{table}' in the schema cache",
                       hint="suparag's local API serves tables and views in schema public")
    return [r["attname"] for r in rows]


def primary_key(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The primary key columns of table in SCHEMA (none for a view)."""
    rows = conn.execute(
        "select a.attname from pg_catalog.pg_index i"
        " join pg_catalog.pg_attribute a on a.attrelid = i.indrelid"
        "  and a.attnum = any(i.indkey)"
        " where i.indrelid = format('%%I.%%I', %s::text, %s::text)::regclass"
        " and i.indisprimary",
        (SCHEMA, table),
    ).fetchall()
    return [r["attname"] for r in rows]


# -- relationships ----------------------------------------------------------------------


@dataclass(frozen=True)
class Relationship:
    """A foreign key between the parent and an embedded table, seen from the parent."""

    #: parent column -> embedded column, in the key's order
    pairs: tuple[tuple[str, str], ...]
    #: whether the embedded side is one row (an object) rather than many (an array)
    to_one: bool


_FOREIGN_KEYS = """
select c.conrelid = to_regclass(%(parent)s) as parent_refers,
       array_agg(a.attname order by k.ord) as local,
       array_agg(fa.attname order by k.ord) as remote,
       exists (select 1 from pg_catalog.pg_index i
               where i.indrelid = c.conrelid and (i.indisunique or i.indisprimary)
                 and i.indpred is null
                 and (i.indkey::int2[])::int2[] @> c.conkey
                 and (i.indkey::int2[])::int2[] <@ c.conkey) as unique_local
from pg_catalog.pg_constraint c
cross join lateral unnest(c.conkey, c.confkey) with ordinality as k(att, fatt, ord)
join pg_catalog.pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.att
join pg_catalog.pg_attribute fa on fa.attrelid = c.confrelid and fa.attnum = k.fatt
where c.contype = 'f'
  and ((c.conrelid = to_regclass(%(parent)s) and c.confrelid = to_regclass(%(child)s))
    or (c.conrelid = to_regclass(%(child)s) and c.confrelid = to_regclass(%(parent)s)))
group by c.oid, c.conrelid, c.conkey
"""


def relationship(conn: psycopg.Connection[Any], table: str, relation: str) -> Relationship:
    """The one foreign key between table and relation (either way round)."""
    keys = conn.execute(
        _FOREIGN_KEYS, {"parent": f'{SCHEMA}."{table}"', "child": f'{SCHEMA}."{relation}"'},
    ).fetchall()
    if not keys:
        raise ApiError(400, "PGRST200", f"Could not find a relationship between "
                       f"'{table}' and '{relation}' in the schema cache",
                       hint="embedding follows foreign keys between tables in public")
    if len(keys) > 1:
        raise ApiError(300, "PGRST201", f"Could not embed because more than one "
                       f"relationship was found for '{table}' and '{relation}'",
                       hint="suparag's local API does not take `!` hints to choose one")
    key = keys[0]
    if key["parent_refers"]:  # many-to-one: the parent holds the key
        return Relationship(tuple(zip(key["local"], key["remote"], strict=True)), True)
    # one-to-many, or one-to-one when the child's key columns are unique
    return Relationship(tuple(zip(key["remote"], key["local"], strict=True)),
                        bool(key["unique_local"]))


# -- functions --------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionArg:
    name: str
    type: str
    is_json: bool
    is_array: bool
    has_default: bool


@dataclass(frozen=True)
class FunctionSpec:
    """A function in `public` as the API calls it."""

    name: str
    args: list[FunctionArg]
    volatility: str
    returns: str  # "void", "scalar", "row" (one composite) or "rows" (a set)


_FUNCTIONS = """
select p.proname, p.provolatile as volatility, p.proretset, p.pronargdefaults,
       p.prorettype = 'pg_catalog.void'::regtype as is_void,
       t.typtype in ('c', 'p') or 't' = any(coalesce(p.proargmodes, '{}')) as is_composite,
       coalesce((
         select json_agg(json_build_object(
                  'name', coalesce(p.proargnames[a.ord], ''),
                  'type', format_type(a.typ, null),
                  'is_json', a.typ in ('json'::regtype, 'jsonb'::regtype),
                  'is_array', at.typcategory = 'A') order by a.ord)
           from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))
                with ordinality a(typ, ord)
           join pg_catalog.pg_type at on at.oid = a.typ
          where coalesce(p.proargmodes[a.ord], 'i') in ('i', 'b', 'v')
       ), '[]') as args
  from pg_catalog.pg_proc p
  join pg_catalog.pg_type t on t.oid = p.prorettype
 where p.pronamespace = %s::regnamespace and p.proname = %s and p.prokind = 'f'
"""


def _returns(row: Mapping[str, Any]) -> str:
    if row["is_void"]:
        return "void"
    if row["proretset"]:
        return "rows"
    return "row" if row["is_composite"] else "scalar"


def find_function(conn: psycopg.Connection[Any], name: str,
                  args: Mapping[str, Any]) -> FunctionSpec:
    """The overload of public.name whose named parameters fit args, or PGRST202 (404)."""
    for row in conn.execute(_FUNCTIONS, (SCHEMA, name)).fetchall():
        raw = row["args"]
        required = len(raw) - row["pronargdefaults"]
        fargs = [FunctionArg(name=a["name"], type=a["type"], is_json=a["is_json"],
                             is_array=a["is_array"], has_default=i >= required)
                 for i, a in enumerate(raw)]
        if len(fargs) == 1 and fargs[0].name == "" and fargs[0].is_json:
            return FunctionSpec(name=name, args=fargs, volatility=row["volatility"],
                                returns=_returns(row))
        names = {a.name for a in fargs}
        if set(args) <= names and all(a.has_default or a.name in args for a in fargs):
            return FunctionSpec(name=name, args=fargs, volatility=row["volatility"],
                                returns=_returns(row))
    listed = ", ".join(sorted(k for k in args if k))
    suffix = f"({listed})" if listed else " without parameters"
    raise ApiError(404, "PGRST202",
                   f"Could not find the function {SCHEMA}.{name}{suffix} in the schema cache",
                   hint="Only functions in schema public are served; check the name and the "
                   "argument names.",
                   details=f"Searched for the function {SCHEMA}.{name} with parameters "
                   f"{listed or 'none'}")
