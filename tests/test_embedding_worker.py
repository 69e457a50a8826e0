"""The embedding worker on the real database with the real model."""

from __future__ import annotations

import threading
import time

import pytest

from worker.db import as_request
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig


@pytest.fixture
def make_worker(db_url, embedder):
    made = []

    def make(**config):
        w = EmbeddingWorker(db_url, embedder, config=WorkerConfig(**config))
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


MATCH = "select document_id from public.match_documents(%s::extensions.vector, %s)"


def insert(conn, world, content, *, owner="alice", title="Doc", visibility="private"):
    row = conn.execute(
        "insert into public.documents (owner_id, title, content, visibility)"
        " values (%s, %s, %s, %s) returning id",
        (world.users[owner].id, title, content, visibility)).fetchone()
    conn.commit()
    return row["id"]


def chunk_rows(conn, doc_id):
    rows = conn.execute(
        "select chunk_index, content, embedding_model, content_hash, embedding::text as v"
        " from public.document_chunks where document_id = %s order by chunk_index",
        (doc_id,)).fetchall()
    conn.commit()
    return rows


def test_insert_then_embedded_and_searchable(conn, world, make_worker, embedder):
    doc_id = insert(conn, world, "Row level security decides who reads which rows.",
                    title="RLS")
    result = make_worker().drain()
    assert result.embedded >= 1
    doc = conn.execute("select * from public.documents where id = %s", (doc_id,)).fetchone()
    assert doc["embedding_status"] == "ready"
    assert doc["embedding_model"] == embedder.name and doc["embedded_at"] is not None
    rows = chunk_rows(conn, doc_id)
    assert len(rows) == 1 and rows[0]["embedding_model"] == embedder.name
    assert len(rows[0]["v"].strip("[]").split(",")) == 384
    assert conn.execute("select count(*) as n from suparag_private.embedding_jobs"
                        " where document_id = %s", (doc_id,)).fetchone()["n"] == 0
    conn.commit()
    query = embedder.embed(["who may read which rows?"])[0]
    with as_request(conn, world.users["alice"].claims()):
        hits = conn.execute(MATCH, (str(query), 3)).fetchall()
    assert hits[0]["document_id"] == doc_id
    with as_request(conn, world.users["bob"].claims()):
        hits = conn.execute(MATCH, (str(query), 50)).fetchall()
    assert doc_id not in {h["document_id"] for h in hits}


def test_content_update_replaces_vectors_and_reuses_unchanged(conn, world, make_worker):
    paragraphs = [f"Section {i}. " + "Vectors live next to the rows they describe. " * 20
                  for i in range(6)]
    doc_id = insert(conn, world, "\n\n".join(paragraphs))
    worker = make_worker()
    worker.drain()
    before = chunk_rows(conn, doc_id)
    assert len(before) > 2
    conn.execute("update public.documents set content = %s where id = %s",
                 ("\n\n".join([*paragraphs[:-1], "A new ending about queues."]), doc_id))
    conn.commit()
    result = worker.drain()
    after = chunk_rows(conn, doc_id)
    assert result.embedded == 1
    assert 0 < result.chunks_embedded < len(after)   # only the changed tail
    assert result.chunks_reused == len(after) - result.chunks_embedded
    assert "A new ending about queues." in after[-1]["content"]
    assert before[0]["v"] == after[0]["v"]            # unchanged chunk kept its vector


def test_metadata_update_embeds_nothing(conn, world, make_worker):
    doc_id = insert(conn, world, "Some text.")
    worker = make_worker()
    worker.drain()
    conn.execute("update public.documents set metadata = '{\"tag\": \"x\"}' where id = %s",
                 (doc_id,))
    conn.commit()
    assert worker.drain().claimed == 0


def test_update_racing_the_worker_ends_with_final_content(conn, world, make_worker, embedder,
                                                          db_url):
    doc_id = insert(conn, world, "first version")
    # Only this document queued: the first batch must be the one the edit races (a claim
    # takes about one token budget of documents, so the world's could fill it).
    conn.execute("delete from suparag_private.embedding_jobs where document_id <> %s", (doc_id,))
    conn.commit()

    class Racing:
        """The real model; while it embeds, someone edits the document."""

        name, max_tokens = embedder.name, embedder.max_tokens
        count_tokens, split_tokens = embedder.count_tokens, embedder.split_tokens
        raced = False

        def embed(self, texts):
            if not Racing.raced:
                Racing.raced = True
                from worker.db import connect
                with connect(db_url) as other:
                    other.execute("update public.documents set content = 'final version'"
                                  " where id = %s", (doc_id,))
                    other.commit()
            return embedder.embed(texts)

    worker = EmbeddingWorker(db_url, Racing(), config=WorkerConfig())
    try:
        first = worker.run_batch()
        assert first.superseded >= 1             # the stale result was dropped
        worker.drain()
    finally:
        worker.close()
    rows = chunk_rows(conn, doc_id)
    assert [r["content"] for r in rows] == ["final version"]
    doc = conn.execute("select embedding_status, content_version from public.documents"
                       " where id = %s", (doc_id,)).fetchone()
    assert doc == {"embedding_status": "ready", "content_version": 2}


def test_two_workers_never_embed_the_same_job(conn, world, db_url, embedder):
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    ids = [insert(conn, world, f"document number {i} about sharing a queue") for i in range(30)]
    seen: dict[str, list] = {"a": [], "b": []}

    class Recording:
        name, max_tokens = embedder.name, embedder.max_tokens
        count_tokens, split_tokens = embedder.count_tokens, embedder.split_tokens

        def __init__(self, key):
            self.key = key

        def embed(self, texts):
            seen[self.key].extend(texts)
            time.sleep(0.01)
            return embedder.embed(texts)

    workers = [EmbeddingWorker(db_url, Recording(k), config=WorkerConfig(batch_size=3))
               for k in seen]
    threads = [threading.Thread(target=w.drain) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for w in workers:
        w.close()
    assert seen["a"] and seen["b"], "both workers took part"
    assert len(seen["a"]) + len(seen["b"]) == len(ids)
    assert not set(seen["a"]) & set(seen["b"])
    ready = conn.execute("select count(*) as n from public.documents where id = any(%s)"
                         " and embedding_status = 'ready'", (ids,)).fetchone()["n"]
    assert ready == len(ids)


def test_crashed_workers_jobs_come_back_after_the_lease(conn, world, make_worker):
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    doc_id = insert(conn, world, "work a crashed worker had claimed")
    with conn.transaction():  # a worker claims, then dies without finishing
        claimed = conn.execute(
            "select * from suparag_private.claim_embedding_jobs('dead-worker', 10, 1)").fetchall()
    assert [c["document_id"] for c in claimed] == [doc_id]
    survivor = make_worker()
    assert survivor.drain().claimed == 0        # still leased
    time.sleep(1.2)
    assert survivor.drain().embedded == 1
    assert chunk_rows(conn, doc_id)[0]["content"] == "work a crashed worker had claimed"


def test_failures_back_off_then_fail_at_the_cap_and_can_be_retried(conn, world):
    doc_id = insert(conn, world, "poison")
    job = conn.execute("select id, content_version from suparag_private.embedding_jobs"
                       " where document_id = %s", (doc_id,)).fetchone()
    outcomes = []
    for attempt in range(3):
        conn.execute("update suparag_private.embedding_jobs set attempts = %s where id = %s",
                     (attempt + 1, job["id"]))
        outcomes.append(conn.execute(
            "select suparag_private.fail_embedding_job(%s, %s, 'boom', 3, 30) as o",
            (job["id"], job["content_version"])).fetchone()["o"])
    conn.commit()
    assert outcomes == ["queued", "queued", "failed"]
    doc = conn.execute("select embedding_status, embedding_error from public.documents"
                       " where id = %s", (doc_id,)).fetchone()
    assert doc == {"embedding_status": "failed", "embedding_error": "boom"}
    queued = conn.execute("select status, run_after > now() + interval '20 seconds' as later"
                          " from suparag_private.embedding_jobs where id = %s",
                          (job["id"],)).fetchone()
    assert queued == {"status": "failed", "later": True}
    assert conn.execute("select suparag_private.retry_embedding_jobs(array[%s]::uuid[]) as n",
                        (doc_id,)).fetchone()["n"] == 1
    conn.commit()
    job_after = conn.execute("select status, attempts from suparag_private.embedding_jobs"
                             " where id = %s", (job["id"],)).fetchone()
    assert job_after == {"status": "queued", "attempts": 0}


def test_empty_content_is_ready_with_no_chunks(conn, world, make_worker):
    doc_id = insert(conn, world, "   ")
    make_worker().drain()
    assert chunk_rows(conn, doc_id) == []
    assert conn.execute("select embedding_status from public.documents where id = %s",
                        (doc_id,)).fetchone()["embedding_status"] == "ready"


@pytest.mark.slow
def test_one_megabyte_document(conn, world, make_worker, embedder):
    text = "\n\n".join(f"Paragraph {i}: " + "tenants, vectors and policies. " * 30
                       for i in range(1100))
    assert len(text) > 1_000_000
    doc_id = insert(conn, world, text)
    make_worker(batch_size=1).drain()
    rows = chunk_rows(conn, doc_id)
    assert len(rows) > 100
    assert "Paragraph 1099:" in rows[-1]["content"]
    assert all(embedder.count_tokens("Doc\n\n" + r["content"]) <= embedder.max_tokens
               for r in rows[:20])


def test_a_batch_is_written_back_in_one_transaction_and_a_refused_write_fails_alone(
        conn, world, make_worker):
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()

    def insert_many(contents):  # one statement: bulk jobs, which one claim takes together
        rows = conn.execute(
            "insert into public.documents (owner_id, title, content)"
            " select %s, 'Doc', c from unnest(%s::text[]) as c returning id",
            (world.users["alice"].id, contents)).fetchall()
        conn.commit()
        return [r["id"] for r in rows]

    def written(ids):
        rows = conn.execute(
            "select d.id, d.embedding_status, d.xmin::text as tx,"
            " (select array_agg(distinct c.xmin::text) from public.document_chunks c"
            "  where c.document_id = d.id) as chunk_tx,"
            " (select j.last_error from suparag_private.embedding_jobs j"
            "  where j.document_id = d.id) as job_error"
            " from public.documents d where d.id = any(%s)", (ids,)).fetchall()
        conn.commit()
        return {r["id"]: r for r in rows}

    worker = make_worker()
    ids = insert_many([f"Document {i} of a batch that is written back together." for i in range(6)])
    assert worker.run_batch().embedded == 6
    rows = written(ids)
    assert {r["embedding_status"] for r in rows.values()} == {"ready"}
    # Each row carries the id of the transaction that last wrote it: one for the batch.
    assert len({r["tx"] for r in rows.values()}) == 1
    assert all(r["chunk_tx"] == [r["tx"]] for r in rows.values())

    # The database refuses one document's chunks (a project's own trigger, say): the
    # group's transaction fails, and each document is written alone.
    conn.execute(
        "create function public.refuse_poison() returns trigger language plpgsql as $$"
        " begin if new.content like '%poison%' then raise exception 'poison refused';"
        " end if; return new; end $$")
    conn.execute("create trigger refuse_poison before insert on public.document_chunks"
                 " for each row execute function public.refuse_poison()")
    conn.commit()
    ids = insert_many([*(f"Healthy document {i}, written back." for i in range(4)),
                       "A poison document whose chunks the database refuses."])
    (poison,) = [r["id"] for r in conn.execute(
        "select id from public.documents where id = any(%s) and content like 'A poison%%'",
        (ids,))]
    healthy = [i for i in ids if i != poison]
    result = worker.run_batch()
    assert (result.embedded, result.retrying, result.failed) == (4, 1, 0)
    rows = written([*healthy, poison])
    assert all(rows[i]["embedding_status"] == "ready" and rows[i]["job_error"] is None
               for i in healthy)
    assert rows[poison]["embedding_status"] != "ready"
    assert rows[poison]["chunk_tx"] is None  # nothing of it was written
    assert "poison refused" in rows[poison]["job_error"]
