"""The edge functions: embed, search (as the caller), wake, health and metrics.

- `POST /functions/v1/embed` `{"input": "text" | [...], "space"?}` → `{"embedding": [...],
  "model"}` (or `"embeddings"` for a list): the shape of Supabase's gte-small example.
  The model is the active space's (a space added with `suparag spaces add`), or the
  configured one for the first space, or that of the named `space`.
- `POST /functions/v1/search` `{"query", "k"?, "filter"?, "hybrid"?, "space"?}` →
  `{"results": [...], "model"}`: `match_documents` (or `hybrid_search`) run inside
  `worker.db.as_request` with the caller's verified claims, i.e. `set local role` to the
  JWT's role and `request.jwt.claims`, as PostgREST does: RLS decides what comes back.
  The role's own settings apply too (`statement_timeout`: Supabase gives anon 3 s and
  authenticated 8 s); a search that runs out answers 503 with code `57014`.
- `POST /functions/v1/wake`: `pg_notify` on every worker queue's channel (where
  `suparag_private.settings.worker_url` may point); needs the wake secret when one is
  set (SUPARAG_WAKE_SECRET, else the Vault secret `suparag_wake_secret`), no JWT.
- `GET /health` (the database answers) and `GET /metrics` (Prometheus text).

Embed and search verify the JWT (`verify_jwt`, see `worker.edge.auth`), cap their
input in bytes before the model loads and in tokens before it runs, and count each
caller against the rate limit (429 with `Retry-After`). Both answer with a
`Server-Timing` header (`model`, `db`, in ms) for the benchmark and browsers'
devtools.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker import search as search_mod
from worker.edge import limits
from worker.edge.auth import Gateway
from worker.edge.metrics import CONTENT_TYPE, EdgeMetrics
from worker.errors import ApiError, ConfigError, NotFound
from worker.jobs.queue import QUEUES
from worker.jobs.wakeups import WAKE_SECRET_HEADER, wake_secret_ok
from worker.models.base import Embedder
from worker.models.cache import DEFAULT_ENTRIES, CachedEmbedder
from worker.spaces import get_space, space_embedder

log = logging.getLogger("suparag.edge")

#: The channels `suparag worker` listens on, one per queue (worker.jobs.queue).
WAKE_CHANNELS = tuple(queue.channel for queue in QUEUES)
_EMBED_HINT = 'Send {"input": "text"} or {"input": ["text", ...]}.'
_SEARCH_HINT = ('Send {"query": "text", "k": 5, "filter": {"key": "value"}, "hybrid": false}'
                ' (all but query optional).')
Pool = ConnectionPool[psycopg.Connection[Any]]
#: How long a space's resolved query model is reused before it is read again. Reading it
#: (the active space, then the models the first space's vectors were made with: a count
#: over every chunk) cost more than the search itself at 10k chunks; a space switch
#: (`suparag spaces activate`) reaches the functions within this many seconds.
SPACE_TTL_SECONDS = 5.0


@dataclass
class EdgeConfig:
    """How the edge functions check callers and bound their work."""

    gateway: Gateway
    #: Functions that need a verified JWT (Supabase's per-function verify_jwt).
    verify_jwt: Mapping[str, bool] = field(
        default_factory=lambda: {"embed": True, "search": True, "wake": False})
    rate_limit: int = limits.RATE_LIMIT
    rate_window: float = limits.RATE_WINDOW_SECONDS
    cache_entries: int = DEFAULT_ENTRIES
    #: The wake-up secret; None: the Vault secret `suparag_wake_secret`, if any.
    wake_secret: str | None = None


def _error(status: int, message: str, *, hint: str, details: str | None = None) -> ApiError:
    code = {400: "bad_request", 404: "not_found", 413: "request_too_large"}.get(status, "error")
    return ApiError(status, code, message, details=details, hint=hint)


def _body_error(hint: str) -> limits.BodyError:
    return lambda status, message, details: _error(status, message, hint=hint, details=details)


def _check_sizes(texts: list[str]) -> None:
    """Bound the model's work before it starts (the anon key is public): 400 for too
    many texts, 413 for a text or a call too large."""
    if len(texts) > limits.MAX_EMBED_INPUTS:
        raise _error(400, f"at most {limits.MAX_EMBED_INPUTS} texts per call "
                     f"(got {len(texts)})", hint=_EMBED_HINT)
    sizes = [len(t.encode()) for t in texts]
    for i, size in enumerate(sizes):
        if size > limits.MAX_EMBED_TEXT_BYTES:
            raise _error(413, f"text {i} is {size} bytes; at most {limits.MAX_EMBED_TEXT_BYTES}"
                         " bytes per text", hint="Split the text into chunks (`suparag ingest`"
                         " does) and embed each.")
    if sum(sizes) > limits.MAX_EMBED_TOTAL_BYTES:
        raise _error(413, f"the texts are {sum(sizes)} bytes; at most "
                     f"{limits.MAX_EMBED_TOTAL_BYTES} bytes per call",
                     hint="Send fewer texts per call.")


def _check_tokens(embedder: Embedder, texts: list[str], *, hint: str) -> None:
    """400 for a text longer than the model reads (it would be cut off silently)."""
    for i, text in enumerate(texts):
        tokens = embedder.count_tokens(text)
        if tokens > embedder.max_tokens:
            raise _error(400, f"text {i} is {tokens} tokens; {embedder.name} reads at most "
                         f"{embedder.max_tokens} tokens per text", hint=hint)


@dataclass(frozen=True)
class SearchRequest:
    query: str
    k: int
    filter: dict[str, Any]
    hybrid: bool
    space: str | None

    @classmethod
    def parse(cls, body: Any) -> SearchRequest:
        """The body's fields, each checked: 400 (or 413 for the query's bytes) otherwise."""
        def bad(message: str) -> ApiError:
            return _error(400, message, hint=_SEARCH_HINT)

        if not isinstance(body, dict):
            raise bad("the body must be a JSON object")
        unknown = set(body) - {"query", "k", "filter", "hybrid", "space"}
        if unknown:
            raise bad(f"unknown field(s): {', '.join(sorted(unknown))}")
        query = body.get("query")
        if not isinstance(query, str) or not query.strip():
            raise bad("`query` must be a non-empty string")
        size = len(query.encode())
        if size > limits.MAX_QUERY_BYTES:
            raise _error(413, f"the query is {size} bytes; at most {limits.MAX_QUERY_BYTES}",
                         hint="Shorten the query: search with the question, not a document.")
        k = body.get("k", 5)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.MAX_SEARCH_K:
            raise bad(f"`k` must be a whole number from 1 to {limits.MAX_SEARCH_K}")
        wanted = body.get("filter") or {}
        if not isinstance(wanted, dict):
            raise bad('`filter` must be an object of metadata keys and values, e.g. '
                      '{"topic": "billing"}')
        if (len(wanted) > limits.MAX_FILTER_KEYS
                or len(json.dumps(wanted)) > limits.MAX_FILTER_BYTES):
            raise bad(f"`filter` may have at most {limits.MAX_FILTER_KEYS} keys and "
                      f"{limits.MAX_FILTER_BYTES} bytes as JSON")
        hybrid = body.get("hybrid", False)
        if not isinstance(hybrid, bool):
            raise bad("`hybrid` must be true or false")
        space = body.get("space")
        if space is not None and (not isinstance(space, str) or not space):
            raise bad("`space` must be the name of an embedding space (`suparag spaces list`)")
        return cls(query, k, wanted, hybrid, space)


class EdgeFunctions:
    """The routes, over the app's pool (`request.app.state.pool`) and one model factory."""

    def __init__(self, config: EdgeConfig, embedder_factory: Callable[[], Embedder]) -> None:
        self.config, self._factory = config, embedder_factory
        self._embedders: dict[str, CachedEmbedder] = {}
        self._resolved: dict[tuple[str | None, bool], tuple[float, CachedEmbedder]] = {}
        self._default_key: str | None = None
        self._lock = threading.Lock()
        self._rate = limits.RateLimit(config.rate_limit, config.rate_window)
        self.metrics = EdgeMetrics(lambda: list(self._embedders.values()), self._queue_depth)
        self._pool: Pool | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/functions/v1/embed", self._timed("embed", self.embed), methods=["POST"]),
            Route("/functions/v1/search", self._timed("search", self.search), methods=["POST"]),
            Route("/functions/v1/wake", self._timed("wake", self.wake), methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
        ]

    # -- plumbing -------------------------------------------------------------------------

    def _timed(self, name: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def timed(request: Request) -> Response:
            started = time.perf_counter()
            self._pool = request.app.state.pool
            status = 500
            try:
                response: Response = await handler(request)
                status = response.status_code
                return response
            except ApiError as exc:
                status = exc.status
                raise
            except PoolTimeout:
                status = 503
                raise
            finally:
                self.metrics.served(name, status, time.perf_counter() - started)
        return timed

    def _caller(self, request: Request, function: str, *, limited: bool = True
                ) -> dict[str, Any] | None:
        """The verified claims (None: anon), counted against the caller's rate if limited."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        claims = self.config.gateway.claims(
            headers, verify_jwt=self.config.verify_jwt.get(function, True))
        role = (claims or {}).get("role", "anon")
        if role == "service_role" or not limited:
            return claims  # the project's own servers; wake-ups (pg_net, with a secret)
        address = request.client.host if request.client else "?"
        who = (claims or {}).get("sub") or f"{role}@{address}"
        wait = self._rate.wait(str(who))
        if wait:
            raise ApiError(429, "rate_limited", f"Too many requests: at most "
                           f"{self.config.rate_limit} per {self.config.rate_window:g} s per "
                           "user", hint=f"Retry after {wait} s.",
                           headers={"Retry-After": str(wait)})
        return claims

    def _cached(self, key: str, build: Callable[[], Embedder]) -> CachedEmbedder:
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = CachedEmbedder(build(),
                                                      max_entries=self.config.cache_entries)
            return self._embedders[key]

    def default_embedder(self) -> CachedEmbedder:
        """The configured embedder, loaded once (the first call waits for the model)."""
        with self._lock:
            if self._default_key is None:
                embedder = self._factory()
                self._default_key = f"model:{embedder.name}"
                self._embedders[self._default_key] = CachedEmbedder(
                    embedder, max_entries=self.config.cache_entries)
            return self._embedders[self._default_key]

    def warm(self) -> threading.Thread:
        """Load the configured model in the background, so the first caller does not wait
        for it (a model takes seconds to load; `suparag search` gives the API 5 s)."""
        def load() -> None:
            try:
                self.default_embedder().embed(["warm up"])
            except Exception as exc:  # the first call will load it again and say why
                log.warning("could not load the embedding model ahead of the first call: %s",
                            exc)
        thread = threading.Thread(target=load, name="suparag-model-warm-up", daemon=True)
        thread.start()
        return thread

    def embedder_for(self, pool: Pool, space: str | None, *,
                     corpus_model: bool) -> CachedEmbedder:
        """The query embedder of space (None: the active one), read on the service connection
        (space and model names only) at most every SPACE_TTL_SECONDS. With corpus_model, the
        first space's model is the one its vectors were made with
        (`worker.search.choose_model`), else the configured one."""
        now = time.monotonic()
        with self._lock:
            found = self._resolved.get((space, corpus_model))
        if found is not None and now - found[0] < SPACE_TTL_SECONDS:
            return found[1]
        with pool.connection() as conn:
            embedder = self._resolve(conn, space, corpus_model=corpus_model)
        with self._lock:
            self._resolved[(space, corpus_model)] = (now, embedder)
        return embedder

    def _resolve(self, conn: psycopg.Connection[Any], space: str | None, *,
                 corpus_model: bool) -> CachedEmbedder:
        try:
            with conn.transaction():
                chosen = get_space(conn, space)
        except NotFound as exc:
            raise _error(404, str(exc), hint="List the spaces with `suparag spaces list`.") \
                from exc
        if chosen.storage == "table":
            return self._cached(f"space:{chosen.id}:{chosen.model}:{chosen.dimensions}",
                                lambda: space_embedder(chosen))
        default = self.default_embedder()
        if not corpus_model:
            return default
        try:
            model = search_mod.choose_model(conn, configured=default.name)
        except NotFound:
            return default  # nothing embedded yet: no results, with the configured model
        except ConfigError as exc:
            raise _error(400, str(exc), hint="Name the space to search.") from exc
        if model == default.name:
            return default
        return self._cached(f"model:{model}", lambda: search_mod.query_embedder(model))

    def _pool_now(self, request: Request) -> Pool:
        pool: Pool = request.app.state.pool
        return pool

    # -- functions ------------------------------------------------------------------------

    async def embed(self, request: Request) -> Response:
        self._caller(request, "embed")
        body = await limits.read_json(request, max_bytes=limits.MAX_FUNCTIONS_BODY,
                                      error=_body_error(_EMBED_HINT))
        texts = body.get("input") if isinstance(body, dict) else None
        space = body.get("space") if isinstance(body, dict) else None
        single = isinstance(texts, str)
        if single:
            texts = [texts]
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) and t.strip() for t in texts)):
            raise _error(400, "`input` must be a non-empty string or a non-empty list of "
                         "non-empty strings", hint=_EMBED_HINT)
        if space is not None and not isinstance(space, str):
            raise _error(400, "`space` must be the name of an embedding space", hint=_EMBED_HINT)
        _check_sizes(texts)
        pool = self._pool_now(request)

        def work() -> tuple[CachedEmbedder, list[list[float]], float]:
            embedder = self.embedder_for(pool, space, corpus_model=False)
            _check_tokens(embedder, texts, hint=_EMBED_HINT)
            started = time.perf_counter()
            vectors = embedder.embed(texts)
            return embedder, vectors, time.perf_counter() - started

        embedder, vectors, model_s = await run_in_threadpool(work)
        self.metrics.model.labels("embed").observe(model_s)
        rows = [[float(x) for x in vector] for vector in vectors]
        headers = {"Server-Timing": f"model;dur={model_s * 1000:.2f}"}
        if single:
            return JSONResponse({"embedding": rows[0], "model": embedder.name}, headers=headers)
        return JSONResponse({"embeddings": rows, "model": embedder.name}, headers=headers)

    async def search(self, request: Request) -> Response:
        claims = self._caller(request, "search")
        body = await limits.read_json(request, max_bytes=limits.MAX_FUNCTIONS_BODY,
                                      error=_body_error(_SEARCH_HINT))
        wanted = SearchRequest.parse(body)
        pool = self._pool_now(request)

        def work() -> tuple[str, list[dict[str, Any]], float, float]:
            # The model runs without a connection held: the pool serves the searches.
            embedder = self.embedder_for(pool, wanted.space, corpus_model=True)
            _check_tokens(embedder, [wanted.query], hint=_SEARCH_HINT)
            started = time.perf_counter()
            vector = embedder.embed([wanted.query])[0]
            embedded = time.perf_counter()
            with pool.connection() as conn:
                try:
                    rows = search_mod.retrieve(
                        conn, vector, claims=claims, model=embedder.name, k=wanted.k,
                        metadata_filter=wanted.filter, space=wanted.space,
                        hybrid_text=wanted.query if wanted.hybrid else None,
                        role_settings=True)
                except psycopg.Error as exc:
                    raise _database_error(exc) from exc
                return (embedder.name, rows, embedded - started,
                        time.perf_counter() - embedded)

        model, rows, model_s, db_s = await run_in_threadpool(work)
        self.metrics.model.labels("search").observe(model_s)
        score = "score" if wanted.hybrid else "similarity"
        results = [{"rank": rank, "document_id": str(row["document_id"]),
                    "chunk_id": row["chunk_id"], "chunk_index": row["chunk_index"],
                    "title": row["title"], "content": row["content"],
                    "metadata": row["metadata"], score: float(row["score"])}
                   for rank, row in enumerate(rows, start=1)]
        return JSONResponse({"results": results, "model": model}, headers={
            "Server-Timing": f"model;dur={model_s * 1000:.2f}, db;dur={db_s * 1000:.2f}"})

    async def wake(self, request: Request) -> Response:
        self._caller(request, "wake", limited=False)
        pool = self._pool_now(request)
        sent = request.headers.get(WAKE_SECRET_HEADER)

        def notify() -> bool:
            with pool.connection() as conn:
                secret = self.config.wake_secret or _vault_wake_secret(conn)
                if not wake_secret_ok(secret, sent):
                    return False
                for channel in WAKE_CHANNELS:
                    conn.execute("select pg_notify(%s, 'http')", (channel,))
            return True

        if not await run_in_threadpool(notify):
            raise ApiError(401, "PGRST301", f"A wake-up needs the {WAKE_SECRET_HEADER} header",
                           hint="Send the Vault secret suparag_wake_secret, as the pg_net "
                           "trigger does.")
        return JSONResponse({"woken": list(WAKE_CHANNELS)})

    async def health(self, request: Request) -> Response:
        pool = self._pool_now(request)

        def check() -> None:
            with pool.connection() as conn:
                conn.execute("select 1")

        try:
            await run_in_threadpool(check)
        except (psycopg.Error, PoolTimeout) as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)[:200]},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        self._pool = self._pool_now(request)
        text = await run_in_threadpool(self.metrics.text)
        return Response(text, media_type=CONTENT_TYPE)

    def _queue_depth(self) -> dict[str, int]:
        """Jobs in each queue (queued or leased, not failed), by the service connection."""
        if self._pool is None:
            return {}
        depth: dict[str, int] = {}
        try:
            with self._pool.connection() as conn:
                for queue in QUEUES:
                    row = conn.execute(
                        psycopg.sql.SQL("select count(*) as n from suparag_private.{}"
                                        " where status <> 'failed'").format(
                            psycopg.sql.Identifier(queue.table))).fetchone()
                    depth[queue.name] = int(row["n"]) if row else 0
        except (psycopg.Error, PoolTimeout):
            return {}  # a scrape still answers, without the depth
        return depth


def _database_error(exc: psycopg.Error) -> ApiError:
    """A database error as PostgREST reports it (statement timeout, bad filter)."""
    diag = exc.diag
    sqlstate = diag.sqlstate or "XX000"
    status = 503 if sqlstate[:2] in ("08", "53", "57") else 500 if sqlstate[:2] == "XX" \
        else 400
    return ApiError(status, sqlstate, diag.message_primary or str(exc),
                    details=diag.message_detail, hint=diag.message_hint)


def _vault_wake_secret(conn: psycopg.Connection[Any]) -> str | None:
    """The Vault secret `suparag_wake_secret`, or None (no Vault, or no such secret)."""
    row = conn.execute("select to_regclass('vault.decrypted_secrets') is not null as v"
                       ).fetchone()
    if not row or not row["v"]:
        return None
    found = conn.execute("select decrypted_secret as s from vault.decrypted_secrets"
                         " where name = 'suparag_wake_secret'").fetchone()
    return None if found is None else found["s"]

