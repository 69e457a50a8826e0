"""`suparag worker` woken by Supabase Realtime (issue 3), end to end against the local
Realtime server: no LISTEN, a sweep that never comes, and still every insert is embedded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_api_realtime import serve

from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.jobs.service import Service, ServiceConfig
from worker.users import add_user

# The realtime client itself reads deprecated websockets attributes when a socket closes.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets")

WAIT = 60.0


def until(test: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not test():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status(conn, doc_id: str) -> str:
    row = conn.execute("select embedding_status from public.documents where id = %s",
                       (doc_id,)).fetchone()
    conn.commit()
    return str(row["embedding_status"])


def insert(conn, title: str) -> str:
    owner = add_user(conn, "ann@example.com")
    row = conn.execute("insert into public.documents (owner_id, visibility, title, content)"
                       " values (%s, 'public', %s, 'a note about realtime wake-ups')"
                       " returning id", (owner.id, title)).fetchone()
    conn.commit()
    return str(row["id"])


def test_realtime_events_wake_the_worker_and_it_resubscribes(db_url, conn, embedder,
                                                               tmp_path: Path):
    home = tmp_path / "home"
    first = serve(db_url, home)
    api = next(first)
    port = int(api.url.rsplit(":", 1)[1])
    service = Service(
        [EmbeddingWorker(db_url, embedder, config=WorkerConfig(batch_size=4))],
        service=ServiceConfig(listen=False, sweep_seconds=3600, supabase_url=api.url,
                              supabase_key=api.keys.service_role_key))
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    try:
        until(lambda: service.health()["realtime"], "the Realtime subscription")
        doc = insert(conn, "first")
        until(lambda: status(conn, doc) == "ready", "the first document to be embedded")
        assert service.wakeups.counts["realtime"] >= 1
        assert service.wakeups.counts["notify"] == 0  # LISTEN is off

        # The Realtime server goes away and comes back: the worker resubscribes.
        next(first, None)
        until(lambda: not service.health()["realtime"], "the subscription to drop")
        second = serve(db_url, home, port=port)
        next(second)
        try:
            until(lambda: service.wakeups.counts["realtime-start"] >= 2, "a resubscription")
            woken = service.wakeups.counts["realtime"]
            doc = insert(conn, "second")
            until(lambda: status(conn, doc) == "ready", "the second document to be embedded")
            assert service.wakeups.counts["realtime"] > woken
        finally:
            service.stop()
            runner.join(timeout=30)
            next(second, None)
    finally:
        service.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert service.totals.embedded == 2
