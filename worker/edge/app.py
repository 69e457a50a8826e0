"""`suparag serve`: the edge functions as a service of their own, next to a Supabase project.

Configured by the environment only (worker/settings.py reads it):
`SUPARAG_DB_URL` (the database; the direct or session-pooler URL), `SUPABASE_ANON_KEY`
(and `SUPABASE_SERVICE_ROLE_KEY`, the keys accepted as `apikey`),
`SUPABASE_JWT_SECRET` and/or `SUPABASE_JWKS_URL` (default: the JWKS of `SUPABASE_URL`),
`SUPARAG_SERVE_HOST` / `SUPARAG_SERVE_PORT` (or `PORT`), `SUPARAG_EDGE_RATE_LIMIT`,
`SUPARAG_EDGE_CACHE_ENTRIES`, `SUPARAG_EDGE_CORS_ORIGINS`, `SUPARAG_WAKE_SECRET`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker.edge.auth import Gateway, jwks_url_for
from worker.edge.functions import EdgeConfig, EdgeFunctions
from worker.errors import ApiError, ConfigError
from worker.models.base import Embedder
from worker.settings import Settings

#: What supabase-js sends with `functions.invoke` (Supabase's documented `corsHeaders`).
CORS_HEADERS = ["authorization", "x-client-info", "apikey", "content-type",
                "x-region", "x-suparag-wake-secret"]
POOL_SIZE = 8
POOL_ACQUIRE_TIMEOUT = 2.0


def config_from_settings(settings: Settings) -> EdgeConfig:
    """The edge config of a hosted project, or ConfigError naming what to set."""
    missing = [name for name, value in (("SUPARAG_DB_URL", settings.db_url),
                                        ("SUPABASE_ANON_KEY", settings.supabase_anon_key))
               if not value]
    jwks = settings.supabase_jwks_url or (jwks_url_for(settings.supabase_url)
                                          if settings.supabase_url else None)
    if not settings.supabase_jwt_secret and not jwks:
        missing.append("SUPABASE_JWT_SECRET or SUPABASE_URL (for its JWKS)")
    if missing:
        raise ConfigError(f"suparag serve needs {', '.join(missing)}: set them in the "
                          "environment (the dashboard's Project Settings > API lists them)")
    keys = frozenset(k for k in (settings.supabase_anon_key, settings.supabase_service_role_key)
                     if k)
    return EdgeConfig(gateway=Gateway(api_keys=keys, jwt_secret=settings.supabase_jwt_secret,
                                      jwks_url=jwks),
                      rate_limit=settings.edge_rate_limit,
                      cache_entries=settings.edge_cache_entries,
                      wake_secret=settings.wake_secret)


def error_response(exc: ApiError) -> JSONResponse:
    """`{code, details, hint, message}` with the error's status and headers (PostgREST)."""
    body = {"code": exc.code, "details": exc.details, "hint": exc.hint, "message": exc.message}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _pool_timeout(request: Request, exc: Exception) -> Response:
    return error_response(ApiError(503, "PGRST003", "Timed out acquiring a database "
                                   "connection", hint="The service is busy: retry after 1 s.",
                                   headers={"Retry-After": "1"}))


def create_edge_app(db_url: str, config: EdgeConfig, embedder_factory: Callable[[], Embedder],
                    *, cors_origins: list[str] | None = None,
                    pool_size: int = POOL_SIZE, warm_model: bool = False) -> Starlette:
    """The edge functions over their own pool of connections to db_url; with warm_model,
    the model loads in the background at start-up instead of on the first call."""
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        db_url, min_size=1, max_size=pool_size, open=False, timeout=POOL_ACQUIRE_TIMEOUT,
        check=ConnectionPool.check_connection,
        kwargs={"autocommit": True, "row_factory": dict_row})
    functions = EdgeFunctions(config, embedder_factory)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool.open(wait=True, timeout=30)
        if warm_model:
            functions.warm()
        try:
            yield
        finally:
            pool.close()

    app = Starlette(
        routes=functions.routes(),
        exception_handlers={ApiError: _api_error, PoolTimeout: _pool_timeout},
        middleware=[Middleware(CORSMiddleware, allow_origins=cors_origins or ["*"],
                               allow_methods=["GET", "POST", "OPTIONS"],
                               allow_headers=CORS_HEADERS, max_age=86400)],
        lifespan=lifespan)
    app.state.pool = pool
    app.state.functions = functions
    return app
