"""`/rest/v1`: PostgREST's semantics for tables in `public` and `/rpc/<function>`.

Each request goes PostgREST's way: read the request (request.py: claims, `Prefer`,
profile, body), then one transaction on a pooled connection: `set transaction read
only` for GET/HEAD and for STABLE/IMMUTABLE functions, then the role and `request.*`
settings exactly as `worker.db.set_request_context` sets them, then one statement
(tables.py or rpc.py, whose query grammar is grammar.py and whose catalog lookups
are catalog.py). Results are built as JSON by PostgreSQL (`json_agg`) and answered
by response.py. Only schema `public` is served.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.db import set_request_context
from worker.devstack.api.context import request_claims
from worker.devstack.api.errors import from_database, pool_timeout
from worker.devstack.api.keys import ProjectKeys
from worker.devstack.api.limits import DEFAULT_MAX_ROWS
from worker.devstack.api.rest import catalog, rpc, tables
from worker.devstack.api.rest.request import Call, read_call
from worker.devstack.api.rest.response import JSON_TYPE, Result, respond
from worker.errors import ApiError


class RestApi:
    """The `/rest/v1` routes over a connection pool."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], keys: ProjectKeys, *,
                 max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.pool, self.keys, self.max_rows = pool, keys, max_rows

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
        call = await read_call(request, self.keys, max_rows=self.max_rows)
        if "function" in request.path_params:
            result = await run_in_threadpool(self._rpc, call, request.path_params["function"])
        else:
            result = await run_in_threadpool(self._table, call, request.path_params["table"])
        return respond(call, result)

    def _table(self, call: Call, table: str) -> Result:
        return self._run(call, read_only=call.method in ("GET", "HEAD"),
                         work=lambda conn: tables.run(conn, call, table))

    def _rpc(self, call: Call, function: str) -> Result:
        args = rpc.arguments(call)
        try:
            with self.pool.connection() as conn:
                spec = catalog.find_function(conn, function, args)
        except PoolTimeout as exc:
            raise pool_timeout() from exc
        except psycopg.OperationalError as exc:
            raise ApiError(503, "PGRST000", "Database connection error",
                           details=str(exc)) from exc
        return self._run(call, read_only=rpc.read_only(call, spec),
                         work=lambda conn: rpc.run(conn, call, spec, args))

    def _run(self, call: Call, *, read_only: bool,
             work: Callable[[psycopg.Connection[Any]], Result]) -> Result:
        """Run work(conn) in one transaction as the caller, mapping errors like PostgREST."""
        try:
            with self.pool.connection() as conn, conn.transaction():
                if read_only:
                    conn.execute("set transaction read only")
                # With the role's statement_timeout, as PostgREST applies it (issue 14).
                set_request_context(conn, call.claims, method=call.method, path=call.path,
                                    headers=call.headers, role_settings=True)
                return work(conn)
        except PoolTimeout as exc:  # an OperationalError: caught before psycopg.Error
            raise pool_timeout() from exc
        except psycopg.Error as exc:
            if exc.diag.sqlstate is None:
                raise ApiError(503, "PGRST000", "Database connection error",
                               details=str(exc)) from exc
            raise from_database(exc, role=call.role) from exc
