"""`suparag status` and `suparag jobs`: the queue as an operator sees it, on the real database."""

from __future__ import annotations

import uuid

import pytest
from test_cli import DbCli

from worker.db import connect
from worker.errors import NotFound
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.status import failed_jobs, pipeline_status, retry_failed


@pytest.fixture
def cli(tmp_path, db_url):
    return DbCli(tmp_path, db_url)


def job_of(conn, doc_id):
    row = conn.execute("select id, content_version, status, attempts"
                       " from suparag_private.embedding_jobs where document_id = %s",
                       (doc_id,)).fetchone()
    conn.commit()
    return row


def test_status_through_the_pipeline(conn, world, db_url, embedder, cli):
    # The world: five documents queued, with hand-made chunks under one model.
    conn.execute("update suparag_private.embedding_jobs set created_at = now() - interval '1 hour'"
                 " where document_id = %s", (world.docs["bob_team"],))
    conn.commit()
    state = pipeline_status(conn)
    assert state.documents == {"pending": 5, "ready": 0, "failed": 0}
    assert (state.queue.due, state.queue.leased, state.queue.backoff, state.queue.failed) == \
        (5, 0, 0, 0)
    assert state.queue.depth == 5
    assert 3600 <= state.queue.oldest_pending_seconds < 3700
    assert [(m.model, m.chunks, m.documents) for m in state.models] == [("test-model", 5, 5)]

    # A worker leases two; one fails and backs off, the other fails at the cap.
    with conn.transaction():
        claimed = conn.execute("select * from suparag_private.claim_embedding_jobs('w', 2, 300)"
                               " order by document_id").fetchall()
    assert len(claimed) == 2
    leased = pipeline_status(conn).queue
    assert (leased.due, leased.leased, leased.backoff) == (3, 2, 0)
    backing_off, failing = claimed
    with conn.transaction():
        conn.execute("select suparag_private.fail_embedding_job(%s, %s, 'slow down', 5, 600)",
                     (backing_off["job_id"], backing_off["content_version"]))
        conn.execute("select suparag_private.fail_embedding_job(%s, %s, 'broken', 1, 0)",
                     (failing["job_id"], failing["content_version"]))

    # The rest are embedded by the real worker.
    worker = EmbeddingWorker(db_url, embedder)
    try:
        assert worker.drain().embedded == 3
    finally:
        worker.close()
    state = pipeline_status(conn)
    assert state.documents == {"pending": 1, "ready": 3, "failed": 1}
    assert (state.queue.due, state.queue.leased, state.queue.backoff, state.queue.failed) == \
        (0, 0, 1, 1)
    assert state.queue.depth == 1
    assert {(m.model, m.chunks, m.documents) for m in state.models} == \
        {(embedder.name, 3, 3), ("test-model", 2, 2)}

    # The same through the CLI.
    shown = cli.json("status")
    assert shown["documents"] == {"pending": 1, "ready": 3, "failed": 1, "total": 5}
    assert {k: shown["queue"][k] for k in ("depth", "due", "leased", "backoff", "failed")} == \
        {"depth": 1, "due": 0, "leased": 0, "backoff": 1, "failed": 1}
    assert shown["queue"]["oldest_pending_seconds"] >= 0
    assert shown["models"][0] == {"model": embedder.name, "chunks": 3, "documents": 3}
    out = cli("status").stdout
    assert "5 (3 ready, 1 pending, 1 failed)" in out
    assert "1 to do (0 due now, 0 leased by a worker, 1 backing off after a failure)" in out
    assert "suparag jobs failed" in out
    assert embedder.name in out and "test-model" in out


def test_status_of_an_empty_database(conn, cli):
    state = pipeline_status(conn)
    assert state.documents == {"pending": 0, "ready": 0, "failed": 0}
    assert state.queue.depth == 0 and state.queue.oldest_pending_seconds is None
    assert state.models == []
    out = cli("status").stdout
    assert "Documents: 0" in out and "none yet" in out


class Poisoned:
    """The real model, except that it refuses any text containing "poison"."""

    def __init__(self, real):
        self.real = real
        self.name, self.max_tokens = real.name, real.max_tokens
        self.count_tokens, self.split_tokens = real.count_tokens, real.split_tokens

    def embed(self, texts):
        if any("poison" in t for t in texts):
            raise RuntimeError("model refused the input (poison)")
        return self.real.embed(texts)


def insert(conn, world, title, content):
    row = conn.execute(
        "insert into public.documents (owner_id, title, content) values (%s, %s, %s)"
        " returning id", (world.users["alice"].id, title, content)).fetchone()
    conn.commit()
    return row["id"]


def test_failed_jobs_listed_and_retried(conn, world, db_url, embedder, cli):
    first = insert(conn, world, "First poison", "a poison pill")
    second = insert(conn, world, "Second poison", "more poison")
    worker = EmbeddingWorker(db_url, Poisoned(embedder), config=WorkerConfig(max_attempts=1))
    try:
        result = worker.drain()
    finally:
        worker.close()
    assert (result.embedded, result.failed) == (5, 2)

    failed = failed_jobs(conn)
    assert {f.document_id for f in failed} == {first, second}
    assert all(f.attempts == 1 and "model refused the input" in (f.last_error or "")
               for f in failed)

    shown = cli.json("jobs", "failed")
    assert {j["document_id"] for j in shown} == {str(first), str(second)}
    assert {j["title"] for j in shown} == {"First poison", "Second poison"}
    assert all(j["attempts"] == 1 and "RuntimeError: model refused" in j["last_error"]
               for j in shown)
    table = cli("jobs", "failed").stdout
    assert str(first) in table and "Second poison" in table and "model refused" in table

    # Bad requests change nothing.
    stranger = str(uuid.uuid4())
    result = cli("jobs", "retry", str(first), stranger, check=False)
    assert result.returncode == 1 and f"no failed embedding job for document {stranger}" \
        in result.stderr
    result = cli("jobs", "retry", "not-an-id", check=False)
    assert result.returncode == 1 and "'not-an-id' is not a document id" in result.stderr
    with pytest.raises(NotFound, match="no failed embedding job"):
        retry_failed(conn, [str(world.docs["alice_public"])])  # embedded fine: nothing to retry
    assert cli("jobs", "retry", check=False).returncode == 2
    both = cli("jobs", "retry", str(first), "--all", check=False)
    assert both.returncode == 2 and "--all" in both.stderr
    assert job_of(conn, first)["status"] == "failed"

    # Retry one: requeued with fresh attempts, the document pending again, workers woken.
    with connect(db_url, autocommit=True) as listener:
        listener.execute("listen suparag_embedding_jobs")
        assert cli.json("jobs", "retry", str(first)) == {"requeued": 1}
        wakeups = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in wakeups] == [("suparag_embedding_jobs", "documents")]
    assert {k: job_of(conn, first)[k] for k in ("status", "attempts")} == \
        {"status": "queued", "attempts": 0}
    doc = conn.execute("select embedding_status, embedding_error from public.documents"
                       " where id = %s", (first,)).fetchone()
    conn.commit()
    assert doc == {"embedding_status": "pending", "embedding_error": None}
    assert [j["document_id"] for j in cli.json("jobs", "failed")] == [str(second)]

    # Retry the rest; once the cause is fixed (the plain model), both embed.
    assert "Requeued 1 document" in cli("jobs", "retry", "--all").stdout
    worker = EmbeddingWorker(db_url, embedder)
    try:
        assert worker.drain().embedded == 2
    finally:
        worker.close()
    assert failed_jobs(conn) == []
    assert "No failed jobs." in cli("jobs", "failed").stdout
    assert "No failed jobs to retry." in cli("jobs", "retry", "--all").stdout
    assert pipeline_status(conn).documents == {"pending": 0, "ready": 7, "failed": 0}
