"""`/functions/v1`: the embed endpoint and the workers' wake-up, as edge functions would be.

- `POST /functions/v1/embed` with `{"input": "text"}` answers `{"embedding": [...],
  "model": name}`, the shape of Supabase's gte-small `embed` example function;
  `{"input": ["a", "b"]}` answers `{"embeddings": [[...], [...]], "model": name}`.
  It needs a project JWT (anon, authenticated or service_role), as an edge
  function with `verify_jwt` does. The model is the configured one
  (SUPARAG_EMBEDDING_PROVIDER / SUPARAG_EMBEDDING_MODEL), loaded on first use.
- `POST /functions/v1/wake` is where `suparag_private.settings.worker_url`
  can point: it sends `pg_notify` on the embedding and answer channels, which
  every `suparag worker` listening on this database receives. A wake-up
  carries no data, so (like the worker's own HTTP endpoint) it needs no key:
  the pg_net trigger sends none, and the worst a stranger can cause is a poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from json import JSONDecodeError
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.devstack.api.context import request_claims
from worker.devstack.api.keys import ProjectKeys
from worker.errors import ApiError
from worker.jobs.queue import QUEUES
from worker.models.base import Embedder

#: The channels `suparag worker` listens on, one per queue (worker.jobs.queue).
WAKE_CHANNELS = tuple(queue.channel for queue in QUEUES)
#: Texts one embed call may carry; more is a 400 rather than a stalled API.
MAX_INPUTS = 256


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message,
                    hint='Send {"input": "text"} or {"input": ["text", ...]}.')


class FunctionsApi:
    """The `/functions/v1` routes over the API's pool and keys."""

    def __init__(self, keys: ProjectKeys, embedder_factory: Callable[[], Embedder]) -> None:
        self.keys, self._factory = keys, embedder_factory
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("/functions/v1/embed", self.embed, methods=["POST"]),
            Route("/functions/v1/wake", self.wake, methods=["POST"]),
        ]

    def embedder(self) -> Embedder:
        """The configured embedder, loaded once (the first call waits for the model)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = self._factory()
            return self._embedder

    async def embed(self, request: Request) -> Response:
        request_claims(request.headers, self.keys)  # 401 unless a valid project JWT
        try:
            body = await request.json()
        except (JSONDecodeError, UnicodeDecodeError) as exc:
            raise _bad_request(f"the body is not JSON: {exc}") from exc
        texts = body.get("input") if isinstance(body, dict) else None
        single = isinstance(texts, str)
        if single:
            texts = [texts]
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) and t.strip() for t in texts)):
            raise _bad_request("`input` must be a non-empty string or a non-empty list of "
                               "non-empty strings")
        if len(texts) > MAX_INPUTS:
            raise _bad_request(f"at most {MAX_INPUTS} texts per call (got {len(texts)})")
        embedder = await run_in_threadpool(self.embedder)
        vectors = await run_in_threadpool(embedder.embed, texts)
        rows = [[float(x) for x in vector] for vector in vectors]
        if single:
            return JSONResponse({"embedding": rows[0], "model": embedder.name})
        return JSONResponse({"embeddings": rows, "model": embedder.name})

    async def wake(self, request: Request) -> Response:
        # The app's pool (create_app builds it after these routes exist).
        pool: ConnectionPool[psycopg.Connection[Any]] = request.app.state.pool

        def notify() -> None:
            with pool.connection() as conn:
                for channel in WAKE_CHANNELS:
                    conn.execute("select pg_notify(%s, 'http')", (channel,))

        await run_in_threadpool(notify)
        return JSONResponse({"woken": list(WAKE_CHANNELS)})


def functions_routes(keys: ProjectKeys,
                     embedder_factory: Callable[[], Embedder]) -> list[Route]:
    """The `/functions/v1` routes, for `create_app(..., routes=...)`."""
    return FunctionsApi(keys, embedder_factory).routes()
