"""Connections, and running SQL as an API role the way PostgREST does."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
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
    """A connection with dict rows, or DatabaseUnavailable with a way forward."""
    try:
        return psycopg.connect(
            db_url, autocommit=autocommit, row_factory=dict_row, connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"no database at {redact(db_url)}: run `suparag dev` or set SUPARAG_DB_URL ({exc})"
        ) from exc


def set_request_context(
    conn: psycopg.Connection[Any],
    claims: Mapping[str, Any] | None,
    *,
    method: str = "POST",
    path: str = "/",
    headers: Mapping[str, str] | None = None,
) -> None:
    """Make the current transaction look like a PostgREST request.

    Sets `role` (i.e. `set local role`) from the claims' role, or anon when
    there are none, and the `request.*` settings PostgREST sets, all local to
    the transaction. Must be called inside a transaction.
    """
    claims = dict(claims or {})
    claims.setdefault("role", "anon")
    conn.execute(
        "select set_config('role', %(role)s, true),"
        " set_config('request.jwt.claims', %(claims)s, true),"
        " set_config('request.method', %(method)s, true),"
        " set_config('request.path', %(path)s, true),"
        " set_config('request.headers', %(headers)s, true)",
        {
            "role": claims["role"],
            "claims": json.dumps(claims),
            "method": method,
            "path": path,
            "headers": json.dumps({k.lower(): v for k, v in (headers or {}).items()}),
        },
    )


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
