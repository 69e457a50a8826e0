"""The long-running worker: drain, then wait for a wake-up or the sweep.

It runs the embedding worker and, when given one, the answer worker
(worker.answering), each over its own queue and on its own loop (answers on a
thread), so neither queue waits for the other; `embeddings=False` runs answers
only.

Wake-ups are hints and the queue is the truth. A worker drains the queue when
it starts and whenever something wakes it:

- LISTEN on `suparag_embedding_jobs` (and `suparag_answer_jobs` for answers),
  which the enqueue triggers notify in the same transaction as the change
  (needs a direct or session-mode connection; Supabase's transaction-mode
  pooler drops LISTEN);
- an HTTP POST to its wake endpoint, which the pg_net trigger calls on hosted
  Supabase when `suparag_private.settings.worker_url` is set;
- with SUPABASE_URL and the service_role key, Supabase Realtime
  `postgres_changes` (INSERT, UPDATE) on `suparag_private.embedding_jobs`, which
  needs neither a direct connection nor an address the database can reach;
- its sweep timer, shortened to the moment the next backed-off job or expired
  lease falls due, so nothing waits on a wake-up that was lost.

A wake-up carries no data and only makes the worker look at the queue now, so
the HTTP endpoint needs no secret: the worst a stranger can do is cause a poll.
Stopping (SIGTERM, Ctrl-C) lets the batch in hand finish and write back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from worker.db import connect, redact
from worker.embedding import BatchResult, EmbeddingWorker, WorkerConfig
from worker.errors import ConfigError
from worker.models.base import Embedder

if TYPE_CHECKING:
    from worker.answering import AnswerResult, AnswerWorker

log = logging.getLogger("suparag.worker")

#: The channel the enqueue trigger notifies.
CHANNEL = "suparag_embedding_jobs"
#: The two queues a service may serve, each on its own loop.
EMBEDDINGS, ANSWERS = "embeddings", "answers"


class Wakeups:
    """Coalescing wake-up flags, one per queue: many hints while busy make one more drain."""

    def __init__(self, queues: tuple[str, ...] = (EMBEDDINGS,)) -> None:
        self._events = {queue: threading.Event() for queue in queues}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def wake(self, source: str, queue: str | None = None) -> None:
        """Count a hint from source and wake queue's loop (None: every queue's)."""
        with self._lock:
            self.counts[source] += 1
        for name, event in self._events.items():
            if queue is None or name == queue:
                event.set()

    def wait(self, queue: str, timeout: float) -> bool:
        """Block queue's loop until a wake-up or timeout; True if woken."""
        event = self._events[queue]
        woken = event.wait(timeout)
        event.clear()
        return woken


class _Listener(threading.Thread):
    """LISTEN on its own autocommit connection; reconnects with backoff."""

    def __init__(self, db_url: str, wakeups: Wakeups, stopping: threading.Event,
                 channels: dict[str, str] | None = None) -> None:
        super().__init__(name="suparag-listen", daemon=True)
        self.db_url, self.wakeups, self.stopping = db_url, wakeups, stopping
        #: channel -> the queue its notifications wake
        self.channels = channels or {CHANNEL: EMBEDDINGS}
        self.listening = threading.Event()

    def run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                with connect(self.db_url, autocommit=True) as conn:
                    for channel in self.channels:
                        conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
                    self.listening.set()
                    # Anything queued while we were not listening is found now.
                    self.wakeups.wake("listen-start")
                    delay = 1.0
                    while not self.stopping.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self.wakeups.wake("notify", self.channels.get(notice.channel))
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("LISTEN connection lost (%s); retrying in %.0f s", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)


class _RealtimeWaker(threading.Thread):
    """Supabase Realtime postgres_changes on the embedding queue; reconnects with backoff.

    An event is only a hint (its payload is ignored): the worker drains the queue.
    """

    TOPIC = "suparag-embedding-jobs"

    def __init__(self, url: str, key: str, wakeups: Wakeups, stopping: threading.Event) -> None:
        super().__init__(name="suparag-realtime", daemon=True)
        self.url, self.key = url.rstrip("/"), key
        self.wakeups, self.stopping = wakeups, stopping
        self.subscribed = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            if await self._session():
                delay = 1.0
            if self.stopping.is_set():
                return
            log.warning("Realtime wake-ups lost; resubscribing in %.0f s", delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping.is_set():
                await asyncio.sleep(0.2)
            delay = min(delay * 2, 30.0)

    async def _session(self) -> bool:
        """Subscribe and wake on every event until the connection is lost or we stop.

        Returns whether the subscription was made (so the backoff starts over).
        """
        from realtime import (
            AsyncRealtimeClient,
            RealtimePostgresChangesListenEvent,
            RealtimeSubscribeStates,
        )

        client = AsyncRealtimeClient(f"{self.url}/realtime/v1", token=self.key,
                                     auto_reconnect=False, max_retries=1)
        lost = asyncio.Event()
        subscribed = False

        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            nonlocal subscribed
            if state == RealtimeSubscribeStates.SUBSCRIBED:
                subscribed = True
                self.subscribed.set()
                # Anything queued while we were not subscribed is found now.
                self.wakeups.wake("realtime-start")
            else:
                log.warning("Realtime subscription %s (%s)", state.value.lower(), error)
                lost.set()

        try:
            channel = client.channel(self.TOPIC)
            for event in (RealtimePostgresChangesListenEvent.Insert,
                          RealtimePostgresChangesListenEvent.Update):
                channel.on_postgres_changes(
                    event, callback=lambda _payload: self.wakeups.wake("realtime", EMBEDDINGS),
                    schema="suparag_private", table="embedding_jobs")
            await channel.subscribe(on_state)
            while not (self.stopping.is_set() or lost.is_set()) and client.is_connected:
                await asyncio.sleep(0.2)
        except Exception as exc:  # any failure to reach Realtime: retry, never crash
            log.warning("Realtime unavailable at %s (%s)", self.url, exc)
        finally:
            self.subscribed.clear()
            with contextlib.suppress(Exception):  # already closed or never connected
                await client.close()
        return subscribed


class _WakeHandler(BaseHTTPRequestHandler):
    server: _WakeServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))  # the body is only a hint; ids at most
        self.server.wakeups.wake("http")
        self._reply(202, {"status": "woken"})

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/health", ""):
            self._reply(200, self.server.health())
        else:
            self._reply(404, {"error": "not found: POST any path to wake, GET /health"})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


class _WakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], wakeups: Wakeups,
                 health: Callable[[], dict[str, Any]]) -> None:
        super().__init__(address, _WakeHandler)
        self.wakeups, self.health = wakeups, health


@dataclass(frozen=True)
class ServiceConfig:
    """How the service waits: sweep interval and the optional HTTP wake endpoint."""

    sweep_seconds: float = 30.0
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # None: no HTTP endpoint; 0: any free port
    listen: bool = True
    # Both set: also wake on Supabase Realtime postgres_changes of the embedding queue.
    supabase_url: str | None = None
    supabase_key: str | None = None


class EmbeddingService:
    """Runs an EmbeddingWorker (and an AnswerWorker, if given) until stopped.

    Woken by LISTEN, HTTP or the sweep. `embeddings=False` runs answers only.
    """

    def __init__(self, db_url: str, embedder: Embedder, *,
                 config: WorkerConfig | None = None,
                 service: ServiceConfig | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None,
                 answers: AnswerWorker | None = None,
                 embeddings: bool = True) -> None:
        if not embeddings and answers is None:
            raise ConfigError("nothing to run: enable embeddings or give an answer worker")
        self.db_url = db_url
        self.worker = EmbeddingWorker(db_url, embedder, config=config)
        self.answers = answers
        self.embeddings = embeddings
        self.answer_totals: AnswerResult | None = None
        self.service = service or ServiceConfig()
        self.on_batch = on_batch
        self.wakeups = Wakeups(tuple(self._queues()))
        self.stopping = threading.Event()
        self.totals = BatchResult()
        self.started_at = time.time()
        self.last_batch_at: float | None = None
        self._listener: _Listener | None = None
        self._http: _WakeServer | None = None
        self._realtime: _RealtimeWaker | None = None
        self._loaded = False
        self._failure: BaseException | None = None  # what ended a queue's thread

    # -- control --------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, then return from run(). Safe from signal handlers."""
        self.stopping.set()
        self.wakeups.wake("stop")

    @property
    def http_address(self) -> tuple[str, int] | None:
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    @property
    def ready(self) -> bool:
        """The model is loaded and LISTEN (when on) is in place: a commit is served at once."""
        listening = self._listener is None or self._listener.listening.is_set()
        return self._loaded and listening and not self.stopping.is_set()

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stopping.is_set() else "running",
            "worker_id": self.worker.config.worker_id,
            "model": self.worker.embedder.name,
            "ready": self.ready,
            "listening": self._listener is not None and self._listener.listening.is_set(),
            "realtime": self._realtime is not None and self._realtime.subscribed.is_set(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "last_batch_at": self.last_batch_at,
            "totals": vars(self.totals),
            "answers": vars(self.answer_totals) if self.answer_totals is not None else None,
            "wakeups": dict(self.wakeups.counts),
        }

    # -- the loop -------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> BatchResult:
        """Drain the backlog; unless once, keep draining on every wake-up until stopped.

        Each queue has a loop of its own: embeddings here, answers on a thread
        (when both run), so a long embedding backlog never holds up an answer
        and an answer being generated never holds up embedding.
        """
        log.info("worker %s on %s with %s (%s)", self.worker.config.worker_id,
                 redact(self.db_url), self.worker.embedder.name,
                 " and ".join(self._queues()))
        first, *others = self._queues()
        threads: list[threading.Thread] = []
        try:
            # Load the model before the first wake-up can arrive, so the first
            # commit is not kept waiting for it; and a model that cannot load
            # stops the worker here, with its error, before it claims a job.
            started = time.monotonic()
            self.worker.embedder.load()
            self._loaded = True
            log.info("model %s loaded in %.1f s", self.worker.embedder.name,
                     time.monotonic() - started)
            if not once:
                self._start_wakeups()  # first, so nothing committed during the drain is missed
            for queue in others:
                thread = threading.Thread(target=self._serve_on_thread, args=(queue, once),
                                          name=f"suparag-{queue}", daemon=True)
                thread.start()
                threads.append(thread)
            self._serve(first, once)
        except BaseException:
            self.stop()  # the other loops end after their batch in hand
            raise
        finally:
            for thread in threads:
                thread.join()
            self._shutdown()
        if self._failure is not None:
            raise self._failure
        return self.totals

    def _serve(self, queue: str, once: bool) -> None:
        """One queue's loop: drain, then drain again on each wake-up or due time."""
        drain = self._drain_embeddings if queue == EMBEDDINGS else self._drain_answers
        drain()
        while not once and not self.stopping.is_set():
            self.wakeups.wait(queue, self._seconds_until_due(queue))
            if not self.stopping.is_set():
                drain()

    def _serve_on_thread(self, queue: str, once: bool) -> None:
        try:
            self._serve(queue, once)
        except BaseException as exc:  # surfaced by run(), which stops the other loops
            log.error("the %s loop failed: %s", queue, exc)
            self._failure = exc
            self.stop()

    def _drain_embeddings(self) -> None:
        def batch_done(batch: BatchResult) -> None:
            self.last_batch_at = time.time()
            self.totals.add(batch)
            log.info("batch: %d embedded, %d superseded, %d retrying, %d failed "
                     "(%d chunks embedded, %d reused)", batch.embedded, batch.superseded,
                     batch.retrying, batch.failed, batch.chunks_embedded, batch.chunks_reused)
            if self.on_batch is not None:
                self.on_batch(batch)

        try:
            self.worker.drain(on_batch=batch_done, should_stop=self.stopping.is_set)
        except psycopg.OperationalError as exc:
            # The database went away: keep running; the sweep retries the drain.
            log.warning("database unavailable (%s); retrying at the next sweep", exc)
            self.worker.close()

    def _drain_answers(self) -> None:
        from worker.answering import AnswerResult

        assert self.answers is not None
        if self.answer_totals is None:
            self.answer_totals = AnswerResult()
        totals = self.answer_totals

        def batch_done(batch: AnswerResult) -> None:
            self.last_batch_at = time.time()
            totals.add(batch)
            log.info("answers: %d answered, %d retrying, %d failed", batch.answered,
                     batch.retrying, batch.failed)

        try:
            self.answers.drain(on_batch=batch_done, should_stop=self.stopping.is_set)
        except psycopg.OperationalError as exc:
            log.warning("database unavailable (%s); retrying at the next sweep", exc)
            self.answers.close()

    def _queues(self) -> list[str]:
        return ([EMBEDDINGS] if self.embeddings else []) + \
            ([ANSWERS] if self.answers is not None else [])

    def _seconds_until_due(self, queue: str) -> float:
        """Sleep until the next sweep, or sooner if one of queue's jobs falls due first."""
        sweep = self.service.sweep_seconds
        table = "embedding_jobs" if queue == EMBEDDINGS else "answer_jobs"
        worker = self.worker if queue == EMBEDDINGS else self.answers
        assert worker is not None
        try:
            with worker.conn.transaction():
                row = worker.conn.execute(
                    sql.SQL("select extract(epoch from min(greatest(run_after,"
                            " coalesce(leased_until, run_after))) - now()) as wait"
                            " from suparag_private.{} where status = 'queued'"
                            ).format(sql.Identifier(table))
                ).fetchone()
        except psycopg.OperationalError:
            worker.close()
            return min(sweep, 5.0)
        wait = row["wait"] if row else None
        if wait is None:
            return sweep
        return max(0.05, min(sweep, float(wait) + 0.05))

    def _start_wakeups(self) -> None:
        if self.service.listen:
            from worker.answering import CHANNEL as ANSWER_CHANNEL

            channels = ({CHANNEL: EMBEDDINGS} if self.embeddings else {}) | \
                ({ANSWER_CHANNEL: ANSWERS} if self.answers is not None else {})
            self._listener = _Listener(self.db_url, self.wakeups, self.stopping, channels)
            self._listener.start()
        if self.embeddings and self.service.supabase_url and self.service.supabase_key:
            try:
                import realtime  # noqa: F401
            except ImportError as exc:
                raise ConfigError("Realtime wake-ups (SUPABASE_URL is set) need the realtime "
                                  "client: pip install realtime") from exc
            self._realtime = _RealtimeWaker(self.service.supabase_url, self.service.supabase_key,
                                            self.wakeups, self.stopping)
            self._realtime.start()
        if self.service.http_port is not None:
            address = (self.service.http_host, self.service.http_port)
            try:
                self._http = _WakeServer(address, self.wakeups, self.health)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve wake-ups on {address[0]}:{address[1]}: {exc.strerror}. "
                    "Choose another --http-port."
                ) from exc
            threading.Thread(target=self._http.serve_forever, name="suparag-http",
                             daemon=True).start()
            log.info("wake-ups over HTTP on http://%s:%d/", *self.http_address or address)

    def _shutdown(self) -> None:
        self.stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._listener is not None:
            self._listener.join(timeout=5)
        if self._realtime is not None:
            self._realtime.join(timeout=5)
        self.worker.close()
        if self.answers is not None:
            self.answers.close()
