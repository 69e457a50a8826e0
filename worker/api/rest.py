"""`/rest/v1`: PostgREST's semantics for tables in `public` and `/rpc/<function>`.

Each request is one transaction on a pooled connection: `set transaction read
only` for GET/HEAD and for STABLE/IMMUTABLE functions, then the role and
`request.*` settings exactly as `worker.db.set_request_context` sets them,
then one statement. Only schema `public` is served. Results are built as JSON
by PostgreSQL (`json_agg`), as PostgREST does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.api import query
from worker.api.context import request_claims
from worker.api.errors import ApiError, from_database
from worker.api.keys import ProjectKeys
from worker.db import set_request_context

SCHEMA = "public"
SINGLE_OBJECT = "application/vnd.pgrst.object+json"
JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class Call:
    """What one REST request asks for, parsed before any database work."""

    method: str
    path: str
    headers: dict[str, str]
    params: list[tuple[str, str]]
    claims: dict[str, Any]
    prefer: dict[str, str]
    body: Any = None

    @property
    def role(self) -> str:
        return str(self.claims.get("role", "anon"))

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k == name), None)

    @property
    def single(self) -> bool:
        return SINGLE_OBJECT in self.headers.get("accept", "")


@dataclass
class Result:
    """Rows as JSON text (or nothing), their count, and the HTTP status."""

    status: int
    body: str | None
    rows: int
    total: int | None = None


def _prefer(header: str) -> dict[str, str]:
    prefer: dict[str, str] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key:
            prefer[key] = value
    return prefer


def _check_profile(headers: Mapping[str, str], method: str) -> None:
    name = "accept-profile" if method in ("GET", "HEAD") else "content-profile"
    profile = headers.get(name)
    if profile is not None and profile != SCHEMA:
        raise ApiError(406, "PGRST106", f"The schema must be one of the following: {SCHEMA}",
                       hint="suparag's local API serves only schema public")


class RestApi:
    """The `/rest/v1` routes over a connection pool."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], keys: ProjectKeys) -> None:
        self.pool, self.keys = pool, keys

    def routes(self) -> list[Route]:
        methods = ["GET", "HEAD", "POST", "PATCH", "DELETE"]
        return [
            Route("/rest/v1/rpc/{function}", self.handle, methods=["GET", "HEAD", "POST"]),
            Route("/rest/v1/{table}", self.handle, methods=methods),
            Route("/rest/v1/", self.root, methods=["GET"]),
        ]

    async def root(self, request: Request) -> Response:
        request_claims({k.lower(): v for k, v in request.headers.items()}, self.keys)
        return Response(json.dumps({"info": {"title": "suparag local API"}}),
                        media_type=JSON_TYPE)

    async def handle(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        claims = request_claims(headers, self.keys)
        _check_profile(headers, request.method)
        body: Any = None
        if request.method in ("POST", "PATCH"):
            raw = await request.body()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise ApiError(400, "PGRST102", "Empty or invalid json",
                                   details=str(exc)) from exc
            elif "table" in request.path_params:
                raise ApiError(400, "PGRST102", "Empty or invalid json")
        call = Call(method=request.method, path=request.url.path, headers=headers,
                    params=list(request.query_params.multi_items()), claims=claims,
                    prefer=_prefer(headers.get("prefer", "")), body=body)
        if "function" in request.path_params:
            result = await run_in_threadpool(self._rpc, call, request.path_params["function"])
        else:
            result = await run_in_threadpool(self._table, call, request.path_params["table"])
        return self._respond(call, result)

    # -- responses --------------------------------------------------------------

    def _respond(self, call: Call, result: Result) -> Response:
        headers: dict[str, str] = {}
        if call.method in ("GET", "HEAD"):
            offset = query.non_negative("offset", call.param("offset")) or 0
            total = "*" if result.total is None else str(result.total)
            span = f"{offset}-{offset + result.rows - 1}" if result.rows else "*"
            headers["Content-Range"] = f"{span}/{total}"
        elif result.total is not None:
            headers["Content-Range"] = f"*/{result.total}"
        body = result.body
        if call.single and body is not None:
            if result.rows != 1:
                raise ApiError(406, "PGRST116",
                               "JSON object requested, multiple (or no) rows returned",
                               details=f"The result contains {result.rows} rows")
            body = json.dumps(json.loads(body)[0])
        if body is None or call.method == "HEAD":
            return Response(status_code=result.status, headers=headers)
        return Response(body, status_code=result.status, headers=headers,
                         media_type=SINGLE_OBJECT if call.single else JSON_TYPE)

    # -- database ---------------------------------------------------------------

    def _run(self, call: Call, *, read_only: bool, work: Any) -> Result:
        """Run work(conn) in one transaction as the caller, mapping errors like PostgREST."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                if read_only:
                    conn.execute("set transaction read only")
                set_request_context(conn, call.claims, method=call.method, path=call.path,
                                    headers=call.headers)
                result: Result = work(conn)
                return result
        except psycopg.Error as exc:
            if exc.diag.sqlstate is None:
                raise ApiError(503, "PGRST000", "Database connection error",
                               details=str(exc)) from exc
            raise from_database(exc, role=call.role) from exc
        except PoolTimeout as exc:
            raise ApiError(503, "PGRST003", "Timed out acquiring connection from connection "
                           "pool.") from exc

    def _rows(self, conn: psycopg.Connection[Any], inner: sql.Composable,
              params: list[Any], *, source: sql.Composable | None = None) -> tuple[str, int]:
        """inner's rows as one JSON array; source is a data-modifying `with` it reads."""
        statement = sql.SQL(
            "select coalesce(json_agg(_s), '[]')::text as body, count(_s) as n from ({}) _s"
        ).format(inner)
        if source is not None:
            statement = sql.SQL("with pgrst_source as ({} returning *) {}").format(
                source, statement)
        row = conn.execute(statement, params).fetchone()
        assert row is not None
        return str(row["body"]), int(row["n"])

    def _columns(self, conn: psycopg.Connection[Any], table: str) -> list[str]:
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

    def _count(self, conn: psycopg.Connection[Any], source: sql.Composable,
               where: query.Fragment) -> int:
        row = conn.execute(sql.SQL("select count(*) as n from {}{}").format(source, where.sql),
                           where.params).fetchone()
        assert row is not None
        return int(row["n"])

    # -- tables -----------------------------------------------------------------

    def _table(self, call: Call, table: str) -> Result:
        read_only = call.method in ("GET", "HEAD")
        return self._run(call, read_only=read_only,
                         work=lambda conn: self._table_work(conn, call, table))

    def _table_work(self, conn: psycopg.Connection[Any], call: Call, table: str) -> Result:
        columns = self._columns(conn, table)
        target = sql.Identifier(SCHEMA, table)
        select = query.select_list(call.param("select"),
                                   Embedding(conn, table, OUTER).embed)
        where = query.where_clause(call.params)
        if call.method in ("GET", "HEAD"):
            limit = query.non_negative("limit", call.param("limit"))
            offset = query.non_negative("offset", call.param("offset"))
            inner = sql.SQL("select {} from {} {}{}{}{}").format(
                select, target, sql.Identifier(OUTER), where.sql,
                query.order_clause(call.param("order")), query.page_clause(limit, offset))
            body, n = self._rows(conn, inner, where.params)
            total = self._count(conn, target, where) if call.prefer.get("count") else None
            return Result(200, body, n, total)
        if call.method == "POST":
            return self._insert(conn, call, table, columns, select)
        if call.method == "PATCH":
            return self._update(conn, call, table, columns, select, where)
        statement = sql.SQL("delete from {}{}").format(target, where.sql)
        return self._mutate(conn, call, statement, where.params, select, 200)

    def _mutate(self, conn: psycopg.Connection[Any], call: Call, statement: sql.Composed,
                params: list[Any], select: sql.Composable, status: int) -> Result:
        """Run an insert/update/delete, returning rows if `Prefer: return=representation`."""
        wants_rows = call.prefer.get("return") == "representation"
        count = bool(call.prefer.get("count"))
        if not wants_rows:
            cursor = conn.execute(statement, params)
            total = cursor.rowcount if count else None
            return Result(201 if status == 201 else 204, None, cursor.rowcount, total)
        inner = sql.SQL("select {} from pgrst_source {}").format(select, sql.Identifier(OUTER))
        body, n = self._rows(conn, inner, params, source=statement)
        return Result(status, body, n, n if count else None)

    def _body_columns(self, call: Call, table: str, columns: list[str]) -> list[str]:
        rows = call.body if isinstance(call.body, list) else [call.body]
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise ApiError(400, "PGRST102", "Empty or invalid json",
                           details="send a JSON object, or an array of objects")
        named = call.param("columns")
        wanted = ([c.strip().strip('"') for c in named.split(",")] if named
                  else list(dict.fromkeys(k for r in rows for k in r)))
        for name in wanted:
            if name not in columns:
                raise ApiError(400, "PGRST204", f"Could not find the '{name}' column of "
                               f"'{table}' in the schema cache")
        return wanted

    def _insert(self, conn: psycopg.Connection[Any], call: Call, table: str,
                columns: list[str], select: sql.Composable) -> Result:
        names = self._body_columns(call, table, columns)
        rows = call.body if isinstance(call.body, list) else [call.body]
        target = sql.Identifier(SCHEMA, table)
        idents = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        statement = sql.SQL(
            "insert into {} ({}) select {} from jsonb_populate_recordset(null::{}, %s) _r"
        ).format(target, idents, idents, target)
        resolution = call.prefer.get("resolution")
        if resolution in ("merge-duplicates", "ignore-duplicates"):
            keys = self._conflict_columns(conn, call, table)
            action = (sql.SQL("nothing") if resolution == "ignore-duplicates" else
                      sql.SQL("update set ") + sql.SQL(", ").join(
                          sql.SQL("{} = excluded.{}").format(sql.Identifier(n), sql.Identifier(n))
                          for n in names))
            statement = statement + sql.SQL(" on conflict ({}) do {}").format(
                sql.SQL(", ").join(sql.Identifier(k) for k in keys), action)
        return self._mutate(conn, call, statement, [Jsonb(rows)], select, 201)

    def _conflict_columns(self, conn: psycopg.Connection[Any], call: Call,
                          table: str) -> list[str]:
        named = call.param("on_conflict")
        if named:
            return [c.strip().strip('"') for c in named.split(",")]
        rows = conn.execute(
            "select a.attname from pg_catalog.pg_index i"
            " join pg_catalog.pg_attribute a on a.attrelid = i.indrelid"
            "  and a.attnum = any(i.indkey)"
            " where i.indrelid = format('%%I.%%I', %s::text, %s::text)::regclass"
            " and i.indisprimary",
            (SCHEMA, table),
        ).fetchall()
        return [r["attname"] for r in rows]

    def _update(self, conn: psycopg.Connection[Any], call: Call, table: str,
                columns: list[str], select: sql.Composable, where: query.Fragment) -> Result:
        if not isinstance(call.body, dict):
            raise ApiError(400, "PGRST102", "Empty or invalid json",
                           details="PATCH takes one JSON object of new values")
        names = self._body_columns(call, table, columns)
        target = sql.Identifier(SCHEMA, table)
        idents = sql.SQL(", ").join(sql.Identifier(n) for n in names)
        statement = sql.SQL(
            "update {} set ({}) = (select {} from jsonb_populate_record(null::{}, %s) _r){}"
        ).format(target, idents, idents, target, where.sql)
        if len(names) == 1:  # `set (a) = (select ...)` needs a row of two or more
            statement = sql.SQL(
                "update {} set {} = (select {} from jsonb_populate_record(null::{}, %s) _r){}"
            ).format(target, idents, idents, target, where.sql)
        return self._mutate(conn, call, statement, [Jsonb(call.body), *where.params], select,
                            200)

    # -- functions --------------------------------------------------------------

    def _rpc(self, call: Call, function: str) -> Result:
        if call.method == "POST":
            if call.body is None:
                args: dict[str, Any] = {}
            elif isinstance(call.body, dict):
                args = call.body
            else:
                args = {"": call.body}
        else:
            args = {k: v for k, v in call.params if k not in query.RESERVED}
        try:
            with self.pool.connection() as conn:
                spec = _find_function(conn, function, args)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise ApiError(503, "PGRST000", "Database connection error",
                           details=str(exc)) from exc
        read_only = call.method in ("GET", "HEAD") or spec.volatility in ("s", "i")
        return self._run(call, read_only=read_only,
                         work=lambda conn: self._rpc_work(conn, call, spec, args))

    def _rpc_work(self, conn: psycopg.Connection[Any], call: Call, spec: FunctionSpec,
                  args: dict[str, Any]) -> Result:
        body = Jsonb(args)
        exprs: list[sql.Composable] = []
        params: list[Any] = []
        for arg in spec.args:
            if arg.name == "":
                # One unnamed json/jsonb parameter receives the whole body (PostgREST).
                exprs.append(sql.SQL("%s::{}").format(sql.SQL(arg.type)))
                params.append(Jsonb(call.body if call.method == "POST" else args))
                continue
            if arg.name not in args:
                continue
            key = sql.Literal(arg.name)
            if arg.is_json:
                value = sql.SQL("(%s::jsonb -> {})::{}").format(key, sql.SQL(arg.type))
            elif arg.is_array:
                value = sql.SQL(
                    "(case jsonb_typeof(%s::jsonb -> {k}) when 'array'"
                    " then array(select jsonb_array_elements_text(%s::jsonb -> {k}))::{t}"
                    " else (%s::jsonb ->> {k})::{t} end)"
                ).format(k=key, t=sql.SQL(arg.type))
                params.extend([body, body])
            else:
                value = sql.SQL("(%s::jsonb ->> {})::{}").format(key, sql.SQL(arg.type))
            params.append(body)
            exprs.append(sql.SQL("{} => {}").format(sql.Identifier(arg.name), value))
        fn = sql.SQL("{}({})").format(sql.Identifier(SCHEMA, spec.name),
                                      sql.SQL(", ").join(exprs))
        if spec.returns == "void":
            conn.execute(sql.SQL("select {}").format(fn), params)
            return Result(204, None, 0)
        if spec.returns == "scalar":
            row = conn.execute(sql.SQL("select to_json({})::text as body").format(fn),
                               params).fetchone()
            assert row is not None
            return Result(200, str(row["body"]), 1)
        # On GET the arguments are query parameters too; they are not filters.
        skip = args if call.method != "POST" else ()
        where = query.where_clause(call.params, skip=skip)
        limit = query.non_negative("limit", call.param("limit"))
        offset = query.non_negative("offset", call.param("offset"))
        inner = sql.SQL("select {} from {} _f{}{}{}").format(
            query.select_list(call.param("select")), fn, where.sql,
            query.order_clause(call.param("order")), query.page_clause(limit, offset))
        rows_body, n = self._rows(conn, inner, params + where.params)
        if spec.returns == "row" and not call.single:
            # A function returning one composite answers with an object.
            rows = json.loads(rows_body)
            return Result(200, json.dumps(rows[0] if rows else None), n)
        return Result(200, rows_body, n)


#: The alias of the requested table in a read; embedded tables are OUTER_1, OUTER_2, ...
OUTER = "pgrst_t"
#: How deep embedded resources may nest (`a(b(c(...)))`).
MAX_EMBED_DEPTH = 8


@dataclass(frozen=True)
class Relationship:
    """A foreign key between the parent and an embedded table, seen from the parent."""

    #: parent column -> embedded column, in the key's order
    pairs: tuple[tuple[str, str], ...]
    #: whether the embedded side is one row (an object) rather than many (an array)
    to_one: bool


class Embedding:
    """Builds `relation(columns)` items of `select=` for one parent table, as PostgREST
    does: a correlated subquery per item, run as the caller, so RLS bounds the
    embedded rows as it bounds the parent's."""

    def __init__(self, conn: psycopg.Connection[Any], table: str, alias: str,
                 depth: int = 0) -> None:
        self.conn, self.table, self.alias, self.depth = conn, table, alias, depth

    def embed(self, relation: str, inner: str) -> sql.Composable:
        if self.depth >= MAX_EMBED_DEPTH:
            raise query.parse_error("embedded resources nest too deeply",
                                    f"at most {MAX_EMBED_DEPTH} levels")
        link = self._relationship(relation)
        alias = f"{OUTER}_{self.depth + 1}"
        child = Embedding(self.conn, relation, alias, self.depth + 1)
        joined = sql.SQL(" and ").join(
            sql.SQL("{}.{} = {}.{}").format(sql.Identifier(alias), sql.Identifier(theirs),
                                            sql.Identifier(self.alias), sql.Identifier(mine))
            for mine, theirs in link.pairs)
        rows = sql.SQL("select {} from {} {} where {}").format(
            query.select_list(inner, child.embed), sql.Identifier(SCHEMA, relation),
            sql.Identifier(alias), joined)
        if link.to_one:
            return sql.SQL("(select to_json(_e) from ({} limit 1) _e)").format(rows)
        return sql.SQL("(select coalesce(json_agg(_e), '[]') from ({}) _e)").format(rows)

    def _relationship(self, relation: str) -> Relationship:
        """The one foreign key between self.table and relation (either way round)."""
        keys = self.conn.execute(
            """
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
            """,
            {"parent": f'{SCHEMA}."{self.table}"', "child": f'{SCHEMA}."{relation}"'},
        ).fetchall()
        if not keys:
            raise ApiError(400, "PGRST200", f"Could not find a relationship between "
                           f"'{self.table}' and '{relation}' in the schema cache",
                           hint="embedding follows foreign keys between tables in public")
        if len(keys) > 1:
            raise ApiError(300, "PGRST201", f"Could not embed because more than one "
                           f"relationship was found for '{self.table}' and '{relation}'",
                           hint="suparag's local API does not take `!` hints to choose one")
        key = keys[0]
        if key["parent_refers"]:  # many-to-one: the parent holds the key
            return Relationship(tuple(zip(key["local"], key["remote"], strict=True)), True)
        # one-to-many, or one-to-one when the child's key columns are unique
        return Relationship(tuple(zip(key["remote"], key["local"], strict=True)),
                            bool(key["unique_local"]))


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


def _find_function(conn: psycopg.Connection[Any], name: str,
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
