"""Connections, and running SQL as an API role the way PostgREST does.

Vectors cross the driver through pgvector's psycopg adapter: `connect`
registers it for the `extensions.vector` and `extensions.halfvec` types (where
the database has them), so a `pgvector.Vector` (see `to_vector`) is a query
parameter and a vector column reads back as one. No vector literal is built by
hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from pgvector import Vector
from psycopg.adapt import PyFormat
from psycopg.rows import dict_row

from worker.errors import DatabaseUnavailable


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def connect(db_url: str, *, autocommit: bool = False) -> psycopg.Connection[dict[str, Any]]:
    """A connection with dict rows and the vector types registered, or DatabaseUnavailable
    with a way forward."""
    try:
        conn = psycopg.connect(
            db_url, autocommit=autocommit, row_factory=dict_row, connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"no database at {redact(db_url)}: run `suparag dev` or set SUPARAG_DB_URL ({exc})"
        ) from exc
    register_vector_types(conn)
    return conn


def register_vector_types(conn: psycopg.Connection[Any]) -> bool:
    """Register pgvector's adapter for the database's vector types on conn.

    The types live in the `extensions` schema (as on Supabase), which is not on
    the search path, so they are looked up by qualified name. Returns False
    when the database has no pgvector yet (before the migrations); the
    connection is left in the transaction state it was in.
    """
    from pgvector.psycopg.halfvec import register_halfvec_info
    from pgvector.psycopg.vector import register_vector_info
    from psycopg.types import TypeInfo

    try:
        vector = TypeInfo.fetch(conn, "extensions.vector")
    except psycopg.errors.InvalidSchemaName:  # no `extensions` schema yet
        return False
    if vector is None:
        return False
    register_vector_info(conn, vector)
    halfvec = TypeInfo.fetch(conn, "extensions.halfvec")
    if halfvec is not None:
        register_halfvec_info(conn, halfvec)
    return True


def ensure_vector_types(conn: psycopg.Connection[Any]) -> None:
    """Register the vector types on conn unless they are (a connection not made by `connect`,
    or made before pgvector was installed)."""
    try:
        conn.adapters.get_dumper(Vector, PyFormat.AUTO)
    except psycopg.ProgrammingError:
        register_vector_types(conn)


def to_vector(values: Sequence[float]) -> Vector:
    """A query parameter of type vector (what an embedder returns is a list of floats)."""
    return Vector(list(values))


def set_request_context(
    conn: psycopg.Connection[Any],
    claims: Mapping[str, Any] | None,
    *,
    method: str = "POST",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    role_settings: bool = False,
) -> None:
    """Make the current transaction look like a PostgREST request.

    Sets `role` (i.e. `set local role`) from the claims' role, or anon when
    there are none, and the `request.*` settings PostgREST sets, all local to
    the transaction. With role_settings, also the role's own `alter role ... set`
    settings (Supabase: `statement_timeout` 3s for anon, 8s for authenticated),
    which `set local role` alone does not apply: PostgREST (>= 11.1) applies the
    impersonated role's settings the same way, for the settings a user may change.
    Must be called inside a transaction.
    """
    claims = dict(claims or {})
    claims.setdefault("role", "anon")
    conn.execute(
        "select set_config('role', %(role)s, true),"
        " set_config('request.jwt.claims', %(claims)s, true),"
        " set_config('request.method', %(method)s, true),"
        " set_config('request.path', %(path)s, true),"
        " set_config('request.headers', %(headers)s, true)"
        + (_ROLE_SETTINGS if role_settings else ""),
        {
            "role": claims["role"],
            "claims": json.dumps(claims),
            "method": method,
            "path": path,
            "headers": json.dumps({k.lower(): v for k, v in (headers or {}).items()}),
        },
    )


# The role's settings for this database (or all databases; a database's own wins), those
# of pg_settings context `user` (what PostgREST applies: not e.g. session_preload_libraries),
# each set local to the transaction. Read per request, so an `alter role` applies at once.
_ROLE_SETTINGS = """,
 (select count(set_config(s.name, s.value, true)) from (
    select distinct on (split_part(c, '=', 1))
           split_part(c, '=', 1) as name, substr(c, strpos(c, '=') + 1) as value
      from pg_catalog.pg_db_role_setting d
      cross join lateral unnest(d.setconfig) as c
     where d.setrole = (select oid from pg_catalog.pg_roles where rolname = %(role)s)
       and d.setdatabase in (0, (select oid from pg_catalog.pg_database
                                  where datname = current_database()))
       and exists (select from pg_catalog.pg_settings p
                    where p.name = split_part(c, '=', 1) and p.context = 'user')
     order by split_part(c, '=', 1), d.setdatabase desc) s)"""


@contextmanager
def as_request(
    conn: psycopg.Connection[Any], claims: Mapping[str, Any] | None, **request: Any
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction that runs as the role and JWT claims given, then ends.

    `claims=None` is an anonymous request. The transaction commits on success,
    as a PostgREST request does. The connection must be idle: inside an open
    transaction this would be a savepoint, and the role would outlive it.
    """
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("as_request needs an idle connection; commit or roll back first")
    with conn.transaction():
        set_request_context(conn, claims, **request)
        yield conn
