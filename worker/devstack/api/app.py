"""The ASGI app: `/rest/v1` and `/auth/v1` over one connection pool.

`create_app` takes extra routes so that the other Supabase services
(`/realtime/v1`, `/functions/v1`) mount next to these without changing them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from worker.devstack.api import limits
from worker.devstack.api.auth import AuthApi
from worker.devstack.api.errors import EXCEPTION_HANDLERS
from worker.devstack.api.keys import ProjectKeys
from worker.devstack.api.rest.routes import RestApi


def create_app(db_url: str, keys: ProjectKeys, *, routes: Sequence[BaseRoute] = (),
               pool_size: int = limits.POOL_SIZE, max_rows: int | None = None) -> Starlette:
    """The local API for the database at db_url, its tokens signed with keys; reads
    return at most max_rows rows (default: `[api] max_rows` of the project's
    supabase/config.toml, found from the working directory, else 1000)."""
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        # A short wait for a connection: when slow requests hold them all, a request is
        # answered 503 with Retry-After rather than queued behind them (issue 14).
        db_url, min_size=1, max_size=pool_size, open=False,
        timeout=limits.POOL_ACQUIRE_TIMEOUT,
        # A restarted or reset local database leaves dead connections behind.
        check=ConnectionPool.check_connection,
        kwargs={"autocommit": True, "row_factory": dict_row},
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            pool.close()

    rows = limits.max_rows() if max_rows is None else max_rows
    rest, auth = RestApi(pool, keys, max_rows=rows), AuthApi(pool, keys)
    app = Starlette(
        routes=[*rest.routes(), *auth.routes(), *routes],
        exception_handlers=EXCEPTION_HANDLERS,
        # Browser apps on another local port call the API directly, as with `supabase start`.
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"],
                               allow_headers=["*"], expose_headers=["Content-Range"])],
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.keys = keys
    return app
