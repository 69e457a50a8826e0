"""The long-running worker service: each queue on its own loop, woken by hints or the sweep.

A `Service` is given the queue workers to run (an EmbeddingWorker, an
AnswerWorker, or both) and runs each on a loop of its own, the first on the
calling thread and the others on threads, so a long embedding backlog never
holds up an answer and an answer being generated never holds up embedding.

Each loop drains its queue when the service starts and whenever something
wakes it (worker.jobs.wakeups: LISTEN, an HTTP POST, Supabase Realtime), and
otherwise sleeps until its sweep, shortened to the moment the queue's next
backed-off job or expired lease falls due, so nothing waits on a wake-up that
was lost. Stopping (SIGTERM, Ctrl-C) lets the batch in hand finish and write
back. A loop that fails stops the service with its error.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.db import redact
from worker.errors import ConfigError
from worker.jobs.embedding import BatchResult
from worker.jobs.queue import ANSWERS, EMBEDDINGS, Queue, QueueWorker
from worker.jobs.wakeups import Listener, RealtimeWaker, WakeServer, Wakeups

log = logging.getLogger("suparag.worker")


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
    # Set: an HTTP wake-up without this secret (X-Suparag-Wake-Secret) is refused 401.
    wake_secret: str | None = None


class _Loop:
    """One queue's worker and what it has done since the service started."""

    def __init__(self, worker: QueueWorker[Any]) -> None:
        self.worker = worker
        self.totals = worker.new_tally()
        self.drained = False


class Service:
    """Runs queue workers, one loop each, until stopped."""

    def __init__(self, workers: Sequence[QueueWorker[Any]], *,
                 service: ServiceConfig | None = None,
                 on_batch: Callable[[Any], None] | None = None) -> None:
        if not workers:
            raise ConfigError("nothing to run: give the service at least one queue worker")
        queues = [w.queue for w in workers]
        if len(set(queues)) != len(queues):
            raise ConfigError("one worker per queue: each queue has one loop")
        self.db_url = workers[0].db_url
        self.loops = {w.queue: _Loop(w) for w in workers}
        self.service = service or ServiceConfig()
        self.on_batch = on_batch
        self.wakeups = Wakeups(queues)
        self.stopping = threading.Event()
        self.started_at = time.time()
        self.last_batch_at: float | None = None
        self._listener: Listener | None = None
        self._http: WakeServer | None = None
        self._realtime: RealtimeWaker | None = None
        self._loaded = False
        self._failure: BaseException | None = None  # what ended a queue's thread

    # -- what it has done -----------------------------------------------------------------

    @property
    def first(self) -> QueueWorker[Any]:
        return next(iter(self.loops.values())).worker

    def totals_of(self, queue: Queue) -> Any | None:
        """The queue's tally since start (None: this service does not run it)."""
        loop = self.loops.get(queue)
        return loop.totals if loop is not None else None

    @property
    def totals(self) -> BatchResult:
        """The embedding queue's tally (all zero when this service runs answers only)."""
        totals = self.totals_of(EMBEDDINGS)
        return totals if totals is not None else BatchResult()

    @property
    def answer_totals(self) -> Any | None:
        """The answer queue's tally, once it has drained (None before, or without answers)."""
        loop = self.loops.get(ANSWERS)
        return loop.totals if loop is not None and loop.drained else None

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

    def database_check(self) -> dict[str, Any]:
        """Whether the database answers now (a fresh connection and `select 1`), and how fast."""
        started = time.monotonic()
        try:
            with psycopg.connect(self.db_url, connect_timeout=3) as conn:
                conn.execute("select 1")
        except psycopg.Error as exc:
            return {"reachable": False, "error": f"{type(exc).__name__}: {exc}".strip()[:300]}
        return {"reachable": True, "ms": round((time.monotonic() - started) * 1000, 1)}

    def health(self) -> dict[str, Any]:
        """What GET /health reports; `live` and `ready` decide /health/live and /health/ready.

        live: no loop has failed and the service is not stopping. ready: live, the model
        loaded, LISTEN in place (when on) and the database reachable now.
        """
        answers = self.answer_totals
        live = self._failure is None and not self.stopping.is_set()
        database = self.database_check()
        return {
            "status": "stopping" if self.stopping.is_set() else "running",
            "worker_id": self.first.config.worker_id,
            "model": self.first.model,
            "live": live,
            "ready": live and self.ready and bool(database["reachable"]),
            "database": database,
            "seconds_since_last_batch": None if self.last_batch_at is None
            else round(time.time() - self.last_batch_at, 1),
            "listening": self._listener is not None and self._listener.listening.is_set(),
            "realtime": self._realtime is not None and self._realtime.subscribed.is_set(),
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "last_batch_at": self.last_batch_at,
            "totals": vars(self.totals),
            "answers": vars(answers) if answers is not None else None,
            "wakeups": dict(self.wakeups.counts),
        }

    # -- the loops ------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> BatchResult:
        """Drain the backlog; unless once, keep draining on every wake-up until stopped.

        Returns the embedding queue's tally (see `totals_of` for any queue's).
        """
        log.info("worker %s on %s with %s (%s)", self.first.config.worker_id,
                 redact(self.db_url), self.first.model,
                 " and ".join(q.name for q in self.loops))
        first, *others = self.loops
        threads: list[threading.Thread] = []
        try:
            # Load the models before the first wake-up can arrive, so the first
            # commit is not kept waiting; and a model that cannot load stops
            # the worker here, with its error, before it claims a job.
            started = time.monotonic()
            for loop in self.loops.values():
                loop.worker.load()
            self._loaded = True
            log.info("model %s loaded in %.1f s", self.first.model, time.monotonic() - started)
            # What is alive now (the libraries, the models' modules: about 485,000 objects
            # with torch) lives as long as the process. Out of the collector's generations,
            # a full collection no longer walks it all (250 ms, holding the GIL the model's
            # lanes need between operators), a few times a drain.
            gc.freeze()
            if not once:
                self._start_wakeups()  # first, so nothing committed during the drain is missed
            for queue in others:
                thread = threading.Thread(target=self._serve_on_thread, args=(queue, once),
                                          name=f"suparag-{queue.name}", daemon=True)
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

    def _serve(self, queue: Queue, once: bool) -> None:
        """One queue's loop: drain, then drain again on each wake-up or due time."""
        self._drain(queue)
        while not once and not self.stopping.is_set():
            self.wakeups.wait(queue, self._seconds_until_due(queue))
            if not self.stopping.is_set():
                self._drain(queue)

    def _serve_on_thread(self, queue: Queue, once: bool) -> None:
        try:
            self._serve(queue, once)
        except BaseException as exc:  # surfaced by run(), which stops the other loops
            log.error("the %s loop failed: %s", queue.name, exc)
            self._failure = exc
            self.stop()

    def _drain(self, queue: Queue) -> None:
        loop = self.loops[queue]

        started = time.monotonic()

        def batch_done(batch: Any) -> None:
            nonlocal started
            now = time.monotonic()
            self.last_batch_at = time.time()
            loop.totals.add(batch)
            # One line per batch; its figures also as fields (`--log-format json`).
            claim = loop.worker.last_claim_seconds
            log.info("%s", loop.worker.describe(batch), extra={"fields": {
                "event": "batch", "queue": queue.name, "worker_id": loop.worker.config.worker_id,
                **vars(batch), "batch_ms": round((now - started) * 1000, 2),
                "claim_ms": None if claim is None else round(claim * 1000, 3)}})
            started = now
            if self.on_batch is not None:
                self.on_batch(batch)

        try:
            loop.worker.drain(on_batch=batch_done, should_stop=self.stopping.is_set)
        except psycopg.OperationalError as exc:
            # The database went away: keep running; the sweep retries the drain.
            log.warning("database unavailable (%s); retrying at the next sweep", exc)
            loop.worker.close()
        finally:
            loop.drained = True

    def _seconds_until_due(self, queue: Queue) -> float:
        """Sleep until the next sweep, or sooner if one of queue's jobs falls due first."""
        sweep = self.service.sweep_seconds
        worker = self.loops[queue].worker
        try:
            wait = worker.seconds_until_due()
        except psycopg.OperationalError:
            worker.close()
            return min(sweep, 5.0)
        if wait is None:
            return sweep
        return max(0.05, min(sweep, wait + 0.05))

    def _start_wakeups(self) -> None:
        if self.service.listen:
            self._listener = Listener(self.db_url, self.wakeups, self.stopping)
            self._listener.start()
        realtime = any(queue.realtime for queue in self.loops)
        if realtime and self.service.supabase_url and self.service.supabase_key:
            try:
                import realtime as _client  # noqa: F401
            except ImportError as exc:
                raise ConfigError("Realtime wake-ups (SUPABASE_URL is set) need the realtime "
                                  "client: pip install realtime") from exc
            self._realtime = RealtimeWaker(self.service.supabase_url, self.service.supabase_key,
                                           self.wakeups, self.stopping)
            self._realtime.start()
        if self.service.http_port is not None:
            address = (self.service.http_host, self.service.http_port)
            if not 0 <= self.service.http_port <= 65535:  # bind() would raise OverflowError
                raise ConfigError(f"--http-port {self.service.http_port} is not a port: "
                                  "give one from 0 (any free port) to 65535")
            try:
                self._http = WakeServer(address, self.wakeups, self.health,
                                        secret=self.service.wake_secret)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve wake-ups on {address[0]}:{address[1]}: {exc.strerror}. "
                    "Choose another --http-port."
                ) from exc
            threading.Thread(target=self._http.serve_forever, name="suparag-http",
                             daemon=True).start()
            log.info("wake-ups over HTTP on http://%s:%d/", *self.http_address or address)
        if self._listener is not None or self._realtime is not None:
            # A source of hints for every enqueue: a drain asks about new interactive work
            # when one arrives (and now and then regardless), not between every two model
            # calls. Not the wake endpoint: it hears of enqueues only where the database's
            # pg_net trigger is configured to call it, which the worker cannot see.
            for queue, loop in self.loops.items():
                loop.worker.hints = functools.partial(self._hints, queue)

    def _hints(self, queue: Queue) -> int | None:
        """queue's wake-up hints so far, or None while neither LISTEN nor Realtime is
        connected (a drain then asks at every boundary)."""
        live = (self._listener is not None and self._listener.listening.is_set()) or \
            (self._realtime is not None and self._realtime.subscribed.is_set())
        return self.wakeups.hints(queue) if live else None

    def _shutdown(self) -> None:
        self.stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._listener is not None:
            self._listener.join(timeout=5)
        if self._realtime is not None:
            self._realtime.join(timeout=5)
        for loop in self.loops.values():
            loop.worker.close()
