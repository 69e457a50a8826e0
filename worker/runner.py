"""The long-running embedding worker: drain, then wait for a wake-up or the sweep.

Wake-ups are hints and the queue is the truth. A worker drains the queue when
it starts and whenever something wakes it:

- LISTEN on `suparag_embedding_jobs`, which the enqueue trigger notifies in the
  same transaction as the change (needs a direct or session-mode connection;
  Supabase's transaction-mode pooler drops LISTEN);
- an HTTP POST to its wake endpoint, which the pg_net trigger calls on hosted
  Supabase when `suparag_private.settings.worker_url` is set;
- its sweep timer, shortened to the moment the next backed-off job or expired
  lease falls due, so nothing waits on a wake-up that was lost.

A wake-up carries no data and only makes the worker look at the queue now, so
the HTTP endpoint needs no secret: the worst a stranger can do is cause a poll.
Stopping (SIGTERM, Ctrl-C) lets the batch in hand finish and write back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

from worker.db import connect, redact
from worker.embedders import Embedder
from worker.embedding import BatchResult, EmbeddingWorker, WorkerConfig
from worker.errors import ConfigError

log = logging.getLogger("suparag.worker")

#: The channel the enqueue trigger notifies.
CHANNEL = "suparag_embedding_jobs"


class Wakeups:
    """Coalescing wake-up flag: many hints while busy make one more drain."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def wake(self, source: str) -> None:
        with self._lock:
            self.counts[source] += 1
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Block until a wake-up or timeout; True if woken."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken


class _Listener(threading.Thread):
    """LISTEN on its own autocommit connection; reconnects with backoff."""

    def __init__(self, db_url: str, wakeups: Wakeups, stopping: threading.Event) -> None:
        super().__init__(name="suparag-listen", daemon=True)
        self.db_url, self.wakeups, self.stopping = db_url, wakeups, stopping
        self.listening = threading.Event()

    def run(self) -> None:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                with connect(self.db_url, autocommit=True) as conn:
                    conn.execute(f"listen {CHANNEL}")
                    self.listening.set()
                    # Anything queued while we were not listening is found now.
                    self.wakeups.wake("listen-start")
                    delay = 1.0
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.wakeups.wake("notify")
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("LISTEN connection lost (%s); retrying in %.0f s", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)


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


class EmbeddingService:
    """Runs an EmbeddingWorker until stopped, woken by LISTEN, HTTP or the sweep."""

    def __init__(self, db_url: str, embedder: Embedder, *,
                 config: WorkerConfig | None = None,
                 service: ServiceConfig | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None) -> None:
        self.db_url = db_url
        self.worker = EmbeddingWorker(db_url, embedder, config=config)
        self.service = service or ServiceConfig()
        self.on_batch = on_batch
        self.wakeups = Wakeups()
        self.stopping = threading.Event()
        self.totals = BatchResult()
        self.started_at = time.time()
        self.last_batch_at: float | None = None
        self._listener: _Listener | None = None
        self._http: _WakeServer | None = None

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

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stopping.is_set() else "running",
            "worker_id": self.worker.config.worker_id,
            "model": self.worker.embedder.name,
            "listening": self._listener is not None and self._listener.listening.is_set(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "last_batch_at": self.last_batch_at,
            "totals": vars(self.totals),
            "wakeups": dict(self.wakeups.counts),
        }

    # -- the loop -------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> BatchResult:
        """Drain the backlog; unless once, keep draining on every wake-up until stopped."""
        log.info("embedding worker %s on %s with %s", self.worker.config.worker_id,
                 redact(self.db_url), self.worker.embedder.name)
        try:
            if not once:
                self._start_wakeups()  # first, so nothing committed during the drain is missed
            self._drain()
            while not once and not self.stopping.is_set():
                self.wakeups.wait(self._seconds_until_due())
                if not self.stopping.is_set():
                    self._drain()
            return self.totals
        finally:
            self._shutdown()

    def _drain(self) -> None:
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

    def _seconds_until_due(self) -> float:
        """Sleep until the next sweep, or sooner if a waiting job falls due first."""
        sweep = self.service.sweep_seconds
        try:
            with self.worker.conn.transaction():
                row = self.worker.conn.execute(
                    "select extract(epoch from min(greatest(run_after,"
                    " coalesce(leased_until, run_after))) - now()) as wait"
                    " from suparag_private.embedding_jobs where status = 'queued'"
                ).fetchone()
        except psycopg.OperationalError:
            self.worker.close()
            return min(sweep, 5.0)
        wait = row["wait"] if row else None
        if wait is None:
            return sweep
        return max(0.05, min(sweep, float(wait) + 0.05))

    def _start_wakeups(self) -> None:
        if self.service.listen:
            self._listener = _Listener(self.db_url, self.wakeups, self.stopping)
            self._listener.start()
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
        self.worker.close()
