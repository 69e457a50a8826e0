"""`/functions/v1`: the embed endpoint and the workers' wake-up, as edge functions would be.

- `POST /functions/v1/embed` with `{"input": "text"}` answers `{"embedding": [...],
  "model": name}`, the shape of Supabase's gte-small `embed` example function;
  `{"input": ["a", "b"]}` answers `{"embeddings": [[...], [...]], "model": name}`.
  It needs a project JWT (anon, authenticated or service_role), as an edge
  function with `verify_jwt` does. The model is the configured one
  (SUPARAG_EMBEDDING_PROVIDER / SUPARAG_EMBEDDING_MODEL), loaded on first use.
- `POST /functions/v1/wake` is where `suparag_private.settings.worker_url`
  can point: it sends `pg_notify` on the embedding and answer channels, which
  every `suparag worker` listening on this database receives. Like the worker's
  own HTTP endpoint, it needs the secret the pg_net trigger sends
  (`X-Suparag-Wake-Secret`, the Vault secret `suparag_wake_secret`, read from
  `vault.decrypted_secrets` on each call) when that secret exists: 401 without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.devstack.api.context import request_claims
from worker.devstack.api.keys import ProjectKeys
from worker.devstack.api.limits import (
    MAX_EMBED_INPUTS,
    MAX_EMBED_TEXT_BYTES,
    MAX_EMBED_TOTAL_BYTES,
    MAX_FUNCTIONS_BODY,
    read_json,
)
from worker.errors import ApiError
from worker.jobs.queue import QUEUES
from worker.jobs.wakeups import WAKE_SECRET_HEADER, wake_secret_ok
from worker.models.base import Embedder

#: The channels `suparag worker` listens on, one per queue (worker.jobs.queue).
WAKE_CHANNELS = tuple(queue.channel for queue in QUEUES)
_HINT = 'Send {"input": "text"} or {"input": ["text", ...]}.'


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message, hint=_HINT)


def _body_error(status: int, message: str, details: str | None) -> ApiError:
    return ApiError(status, "bad_request" if status == 400 else "request_too_large", message,
                    details=details, hint=_HINT)


def _check_sizes(texts: list[str]) -> None:
    """Bound the model's work before it starts (the anon key is public): 400 for too
    many texts, 413 for a text or a call too large."""
    if len(texts) > MAX_EMBED_INPUTS:
        raise _bad_request(f"at most {MAX_EMBED_INPUTS} texts per call (got {len(texts)})")
    sizes = [len(t.encode()) for t in texts]
    for i, size in enumerate(sizes):
        if size > MAX_EMBED_TEXT_BYTES:
            raise ApiError(413, "request_too_large", f"text {i} is {size} bytes; at most "
                           f"{MAX_EMBED_TEXT_BYTES} bytes per text", hint="Split the text "
                           "into chunks (`suparag ingest` does) and embed each.")
    if sum(sizes) > MAX_EMBED_TOTAL_BYTES:
        raise ApiError(413, "request_too_large", f"the texts are {sum(sizes)} bytes; at most "
                       f"{MAX_EMBED_TOTAL_BYTES} bytes per call", hint="Send fewer texts "
                       "per call.")


def _check_tokens(embedder: Embedder, texts: list[str]) -> None:
    """400 for a text longer than the model reads (it would be cut off silently)."""
    for i, text in enumerate(texts):
        tokens = embedder.count_tokens(text)
        if tokens > embedder.max_tokens:
            raise _bad_request(f"text {i} is {tokens} tokens; {embedder.name} reads at most "
                               f"{embedder.max_tokens} tokens per text")


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
        body = await read_json(request, max_bytes=MAX_FUNCTIONS_BODY, error=_body_error)
        texts = body.get("input") if isinstance(body, dict) else None
        single = isinstance(texts, str)
        if single:
            texts = [texts]
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) and t.strip() for t in texts)):
            raise _bad_request("`input` must be a non-empty string or a non-empty list of "
                               "non-empty strings")
        _check_sizes(texts)
        embedder = await run_in_threadpool(self.embedder)
        await run_in_threadpool(_check_tokens, embedder, texts)
        vectors = await run_in_threadpool(embedder.embed, texts)
        rows = [[float(x) for x in vector] for vector in vectors]
        if single:
            return JSONResponse({"embedding": rows[0], "model": embedder.name})
        return JSONResponse({"embeddings": rows, "model": embedder.name})

    async def wake(self, request: Request) -> Response:
        # The app's pool (create_app builds it after these routes exist).
        pool: ConnectionPool[psycopg.Connection[Any]] = request.app.state.pool

        sent = request.headers.get(WAKE_SECRET_HEADER)

        def notify() -> bool:
            with pool.connection() as conn:
                if not wake_secret_ok(_vault_wake_secret(conn), sent):
                    return False
                for channel in WAKE_CHANNELS:
                    conn.execute("select pg_notify(%s, 'http')", (channel,))
            return True

        if not await run_in_threadpool(notify):
            raise ApiError(401, "PGRST301", f"A wake-up needs the {WAKE_SECRET_HEADER} header",
                           hint="Send the Vault secret suparag_wake_secret, as the pg_net "
                           "trigger does.")
        return JSONResponse({"woken": list(WAKE_CHANNELS)})


def _vault_wake_secret(conn: psycopg.Connection[Any]) -> str | None:
    """The Vault secret `suparag_wake_secret`, or None (no Vault, or no such secret)."""
    row = conn.execute("select to_regclass('vault.decrypted_secrets') is not null as v"
                       ).fetchone()
    if not row or not row["v"]:
        return None
    found = conn.execute("select decrypted_secret as s from vault.decrypted_secrets"
                         " where name = 'suparag_wake_secret'").fetchone()
    return None if found is None else found["s"]


def functions_routes(keys: ProjectKeys,
                     embedder_factory: Callable[[], Embedder]) -> list[Route]:
    """The `/functions/v1` routes, for `create_app(..., routes=...)`."""
    return FunctionsApi(keys, embedder_factory).routes()
