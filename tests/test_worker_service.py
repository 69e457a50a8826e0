"""The long-running worker: each wake-up path, the sweep, SIGTERM and SIGKILL."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import wait_for

from worker.db import connect
from worker.errors import ConfigError
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.jobs.service import Service, ServiceConfig

SUPARAG = str(Path(sys.executable).parent / "suparag")


def insert(conn, owner_id, content, title="Doc"):
    row = conn.execute(
        "insert into public.documents (owner_id, title, content) values (%s, %s, %s)"
        " returning id", (owner_id, title, content)).fetchone()
    conn.commit()
    return row["id"]



def status_of(conn, doc_id):
    row = conn.execute("select embedding_status from public.documents where id = %s",
                       (doc_id,)).fetchone()
    conn.commit()
    return row["embedding_status"]


def counts(conn, ids):
    row = conn.execute(
        "select count(*) filter (where embedding_status = 'ready') as ready,"
        " (select count(*) from suparag_private.embedding_jobs"
        "  where leased_by is not null and document_id = any(%(ids)s)) as leased"
        " from public.documents where id = any(%(ids)s)", {"ids": ids}).fetchone()
    conn.commit()
    return row


class Running:
    """A Service of one EmbeddingWorker on a thread, stopped on exit."""

    def __init__(self, db_url, embedder, **service):
        self.service = Service([EmbeddingWorker(db_url, embedder, config=WorkerConfig())],
                               service=ServiceConfig(**service))
        self.thread = threading.Thread(target=self.service.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert wait_for(lambda: self.service.last_batch_at is not None or
                        self.service.wakeups.counts["listen-start"] or
                        self.service.http_address is not None, 10)
        return self.service

    def __exit__(self, *exc):
        self.service.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def test_notify_wakes_the_worker(conn, world, db_url, embedder):
    # A sweep far beyond the test: only the NOTIFY can explain the speed.
    with Running(db_url, embedder, sweep_seconds=3600) as service:
        assert wait_for(lambda: service._listener is not None
                        and service._listener.listening.is_set())
        # The worker's drains see the hints (worker/jobs/pipeline.py asks about edits on them).
        assert wait_for(lambda: service.first.hints is not None)
        hinted = service.first.hints()
        doc_id = insert(conn, world.users["alice"].id, "Woken by a notification.")
        assert wait_for(lambda: status_of(conn, doc_id) == "ready")
        assert service.wakeups.counts["notify"] >= 1
        assert service.first.hints() > hinted
        # The batch is tallied once its write-back returns, just after the commit.
        assert wait_for(lambda: service.totals.embedded >= 1)


def test_what_is_alive_once_the_model_is_loaded_is_frozen_out_of_the_collector(
        db_url, embedder):
    # A full collection would otherwise walk the libraries' and the model's objects
    # (about 485,000 with torch), holding the GIL the model's lanes need.
    gc.unfreeze()
    try:
        with Running(db_url, embedder, sweep_seconds=3600):
            assert wait_for(lambda: gc.get_freeze_count() > 100_000)
    finally:
        gc.unfreeze()


def test_http_post_wakes_the_worker(conn, world, db_url, embedder):
    with Running(db_url, embedder, sweep_seconds=3600, listen=False, http_port=0) as service:
        host, port = service.http_address
        doc_id = insert(conn, world.users["alice"].id, "Woken over HTTP, as pg_net would.")
        assert status_of(conn, doc_id) == "pending"
        body = json.dumps({"type": "INSERT", "record": {"id": str(doc_id)}}).encode()
        request = urllib.request.Request(f"http://{host}:{port}/wake", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
        assert wait_for(lambda: status_of(conn, doc_id) == "ready")
        assert wait_for(lambda: service.totals.embedded >= 1)  # tallied after the commit
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as response:
            health = json.load(response)
        assert health["totals"]["embedded"] >= 1 and health["wakeups"]["http"] == 1
        assert health["model"] == embedder.name and health["listening"] is False
        # The wake endpoint is not a source of hints for a drain: it hears of enqueues only
        # where the database's pg_net trigger is set to call it.
        assert service.first.hints is None


def test_sweep_finds_work_when_every_wakeup_is_lost(conn, world, db_url, embedder):
    with Running(db_url, embedder, sweep_seconds=0.5, listen=False) as service:
        doc_id = insert(conn, world.users["alice"].id, "Nobody told the worker.")
        assert wait_for(lambda: status_of(conn, doc_id) == "ready")
        assert not service.wakeups.counts["notify"] and not service.wakeups.counts["http"]
        assert service.first.hints is None  # no source: a drain asks at every boundary


def test_a_backed_off_job_runs_when_due_without_a_wakeup(conn, world, db_url, embedder):
    doc_id = insert(conn, world.users["alice"].id, "Retry me in a second.")
    conn.execute("update suparag_private.embedding_jobs set run_after = now() + interval '1 s'")
    conn.commit()
    with Running(db_url, embedder, sweep_seconds=3600, listen=False) as service:
        assert wait_for(lambda: status_of(conn, doc_id) == "ready", 15)
        assert not service.wakeups.counts   # no wake-up: the due time ended the wait


def test_busy_port_is_a_clear_error(db_url, embedder):
    with Running(db_url, embedder, sweep_seconds=3600, listen=False, http_port=0) as first:
        _, port = first.http_address
        second = Service([EmbeddingWorker(db_url, embedder)],
                         service=ServiceConfig(http_port=port, listen=False))
        with pytest.raises(Exception, match="Choose another --http-port"):
            second.run()


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_a_port_out_of_range_is_a_clear_error(db_url, embedder, port):
    # Issue 14: bind() raised OverflowError, which no error boundary turns into a message.
    service = Service([EmbeddingWorker(db_url, embedder)],
                      service=ServiceConfig(http_port=port, listen=False))
    with pytest.raises(ConfigError, match=f"--http-port {port} is not a port: give one from 0"):
        service.run()


# -- the real command, as a process -------------------------------------------------------

def worker_process(db_url, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPARAG_")}
    env.update(SUPARAG_DB_URL=db_url, HF_HUB_OFFLINE="1")
    return subprocess.Popen([SUPARAG, "worker", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def many_docs(conn, owner_id, n):
    """n multi-chunk documents, the only jobs in the queue."""
    conn.execute("delete from suparag_private.embedding_jobs")
    text = " ".join(f"Sentence {i} about leases, queues and vectors." for i in range(60))
    rows = conn.execute(
        "insert into public.documents (owner_id, title, content)"
        " select %s, 'Doc ' || g, g || ': ' || %s from generate_series(1, %s) g"
        " returning id", (owner_id, text, n)).fetchall()
    conn.commit()
    return [r["id"] for r in rows]


def assert_all_embedded_from_final_content(conn, ids):
    rows = conn.execute(
        "select d.id, d.embedding_status, count(c.id) as chunks,"
        " bool_and(position(split_part(d.content, ':', 1) || ':' in c.content) = 1"
        "          or c.chunk_index > 0) as first_chunk_matches"
        " from public.documents d left join public.document_chunks c on c.document_id = d.id"
        " where d.id = any(%s) group by d.id", (ids,)).fetchall()
    conn.commit()
    assert len(rows) == len(ids)
    assert all(r["embedding_status"] == "ready" and r["chunks"] > 0 for r in rows)
    assert all(r["first_chunk_matches"] for r in rows)
    left = conn.execute("select count(*) as n from suparag_private.embedding_jobs"
                        " where document_id = any(%s)", (ids,)).fetchone()
    conn.commit()
    assert left["n"] == 0


@pytest.mark.slow
def test_sigkill_mid_batch_loses_nothing(conn, world, db_url):
    ids = many_docs(conn, world.users["alice"].id, 60)
    victim = worker_process(db_url, "--batch-size", "20", "--lease", "10")
    try:
        # Kill it while it holds leases and has written some documents back.
        assert wait_for(lambda: (c := counts(conn, ids))["ready"] > 0 and c["leased"] > 0, 120)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    stranded = counts(conn, ids)
    assert stranded["leased"] > 0 and stranded["ready"] < len(ids)
    survivor = subprocess.run([SUPARAG, "worker", "--once", "--json"],
                              env={**os.environ, "SUPARAG_DB_URL": db_url}, text=True,
                              capture_output=True, timeout=300)
    assert survivor.returncode == 0, survivor.stderr
    # The dead worker's leases had not expired yet: the survivor took the rest,
    # then a later run (after the lease) finishes the stranded batch.
    time.sleep(10)
    again = subprocess.run([SUPARAG, "worker", "--once", "--json"],
                           env={**os.environ, "SUPARAG_DB_URL": db_url}, text=True,
                           capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    done = json.loads(survivor.stdout)["embedded"] + json.loads(again.stdout)["embedded"]
    assert done == len(ids) - stranded["ready"]
    assert_all_embedded_from_final_content(conn, ids)


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_hand(conn, world, db_url):
    ids = many_docs(conn, world.users["alice"].id, 60)
    proc = worker_process(db_url, "--batch-size", "20")
    try:
        # Once the model is at work (a batch written): SIGTERM before that may find no batch
        # in hand, only a claim the model has not started, which a stop gives back.
        assert wait_for(lambda: counts(conn, ids)["ready"] > 0, 120)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "finishing the batch in hand" in stderr and "Traceback" not in stderr
    after = counts(conn, ids)
    assert after["leased"] == 0          # nothing left half-done
    assert 0 < after["ready"] <= len(ids)
    # Whatever it did not reach is still queued for the next worker.
    queued = conn.execute("select count(*) as n from suparag_private.embedding_jobs"
                          " where document_id = any(%s)", (ids,)).fetchone()
    conn.commit()
    assert queued["n"] == len(ids) - after["ready"]


def test_once_drains_and_exits(conn, world, db_url):
    ids = many_docs(conn, world.users["bob"].id, 5)
    result = subprocess.run([SUPARAG, "worker", "--once", "--json"],
                            env={**os.environ, "SUPARAG_DB_URL": db_url}, text=True,
                            capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["embedded"] == 5
    assert_all_embedded_from_final_content(conn, ids)
    with connect(db_url) as other:
        assert other.execute("select count(*) as n from public.document_chunks"
                             ).fetchone()["n"] >= 5
