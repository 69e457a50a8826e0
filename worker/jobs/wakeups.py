"""Wake-ups: the hints that make a worker look at its queue now.

A wake-up carries no data and only makes a queue's loop drain now; the queue
is the truth, so a lost one delays work until the sweep, and a forged one
costs a poll. The sources:

- `Listener`: LISTEN on each queue's channel, which its enqueue trigger
  notifies in the same transaction as the change (needs a direct or
  session-mode connection; Supabase's transaction-mode pooler drops LISTEN);
- `WakeServer`: an HTTP POST to the worker's wake endpoint, which the pg_net
  trigger calls on hosted Supabase when `suparag_private.settings.worker_url`
  is set (GET /health reports the service; /health/live and /health/ready
  answer 200 or 503 for orchestrators). That endpoint faces the internet,
  so with a secret configured (SUPARAG_WAKE_SECRET, the Vault secret
  `suparag_wake_secret` the trigger sends) a POST without it is refused 401;
- `RealtimeWaker`: Supabase Realtime `postgres_changes` (INSERT, UPDATE) on
  the queue tables in the supabase_realtime publication, which needs neither
  a direct connection nor an address the database can reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg import sql

from worker.db import connect
from worker.jobs.queue import Queue

log = logging.getLogger("suparag.worker")


class Wakeups:
    """Coalescing wake-up flags, one per queue: many hints while busy make one more drain."""

    def __init__(self, queues: Iterable[Queue]) -> None:
        self._events = {queue: threading.Event() for queue in queues}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._hints: Counter[Queue] = Counter()  # hints each queue has had, ever

    @property
    def queues(self) -> list[Queue]:
        return list(self._events)

    def wake(self, source: str, queue: Queue | None = None) -> None:
        """Count a hint from source and wake queue's loop (None: every queue's)."""
        woken = [name for name in self._events if queue is None or name == queue]
        with self._lock:
            self.counts[source] += 1
            self._hints.update(woken)
        for name in woken:
            self._events[name].set()

    def hints(self, queue: Queue) -> int:
        """How many hints queue has had: it changes when something may have been queued
        (a drain in progress asks the queue about new interactive work only then)."""
        with self._lock:
            return self._hints[queue]

    def wait(self, queue: Queue, timeout: float) -> bool:
        """Block queue's loop until a wake-up or timeout; True if woken."""
        event = self._events[queue]
        woken = event.wait(timeout)
        event.clear()
        return woken


class Listener(threading.Thread):
    """LISTEN to every queue's channel on its own autocommit connection; reconnects with
    backoff."""

    def __init__(self, db_url: str, wakeups: Wakeups, stopping: threading.Event) -> None:
        super().__init__(name="suparag-listen", daemon=True)
        self.db_url, self.wakeups, self.stopping = db_url, wakeups, stopping
        #: channel -> the queue its notifications wake
        self.channels = {queue.channel: queue for queue in wakeups.queues}
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


class RealtimeWaker(threading.Thread):
    """Supabase Realtime postgres_changes on the queue tables in the supabase_realtime
    publication (the embedding queue); reconnects with backoff.

    An event is only a hint (its payload is ignored): the worker drains the queue.
    """

    TOPIC = "suparag-embedding-jobs"

    def __init__(self, url: str, key: str, wakeups: Wakeups, stopping: threading.Event) -> None:
        super().__init__(name="suparag-realtime-wake", daemon=True)
        self.url, self.key = url.rstrip("/"), key
        self.wakeups, self.stopping = wakeups, stopping
        self.queues = [queue for queue in wakeups.queues if queue.realtime]
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
            for queue in self.queues:
                for event in (RealtimePostgresChangesListenEvent.Insert,
                              RealtimePostgresChangesListenEvent.Update):
                    channel.on_postgres_changes(
                        event, callback=self._waker(queue),
                        schema="suparag_private", table=queue.table)
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

    def _waker(self, queue: Queue) -> Callable[[Any], None]:
        return lambda _payload: self.wakeups.wake("realtime", queue)


#: The header the pg_net trigger (migration 20261202030000) puts the Vault secret in.
WAKE_SECRET_HEADER = "X-Suparag-Wake-Secret"


def wake_secret_ok(expected: str | None, sent: str | None) -> bool:
    """Whether a wake-up may pass: no secret configured, or sent equals it (compared in
    constant time)."""
    if not expected:
        return True
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


class _WakeHandler(BaseHTTPRequestHandler):
    server: WakeServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))  # the body is only a hint; ids at most
        if not wake_secret_ok(self.server.secret, self.headers.get(WAKE_SECRET_HEADER)):
            self._reply(401, {"error": f"wake-ups need the {WAKE_SECRET_HEADER} header: the "
                              "Vault secret suparag_wake_secret (SUPARAG_WAKE_SECRET)"})
            return
        self.server.wakeups.wake("http")
        self._reply(202, {"status": "woken"})

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/health", ""):
            self._reply(200, self.server.health())
        elif path in ("/health/live", "/health/ready"):
            # For orchestrators (Kubernetes probes, load balancers): the status says it.
            health = self.server.health()
            ok = bool(health.get(path.rsplit("/", 1)[1]))
            self._reply(200 if ok else 503, health)
        else:
            self._reply(404, {"error": "not found: POST any path to wake, GET /health, "
                              "/health/live or /health/ready"})

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


class WakeServer(ThreadingHTTPServer):
    """POST any path: wake every queue (with the secret, when one is set: 401 without).
    GET /health: what the service reports."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], wakeups: Wakeups,
                 health: Callable[[], dict[str, Any]], *, secret: str | None = None) -> None:
        super().__init__(address, _WakeHandler)
        self.wakeups, self.health, self.secret = wakeups, health, secret
