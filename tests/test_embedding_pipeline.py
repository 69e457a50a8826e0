"""The pipelined embedding worker keeps every guarantee (issue 16).

While the model embeds one batch, the next is already claimed, read and
chunked, and the previous one is being written back (worker/jobs/pipeline.py).
These tests put work in that window: a version bump of a waiting batch, a
stop, a lease shorter than a model call. And model calls are sized by tokens
(worker/jobs/batching.py): never over the budget but for a single oversize text.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time

import pytest

from worker.db import connect
from worker.jobs import pipeline
from worker.jobs.batching import SPECIAL_TOKENS, model_calls, padded_cost
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import EMBEDDINGS, WorkerConfig
from worker.jobs.wakeups import Listener, Wakeups


def insert_docs(conn, world, contents, *, owner="alice"):
    ids = []
    for content in contents:  # a transaction each: interactive, claimed in insert order
        ids.append(conn.execute(
            "insert into public.documents (owner_id, title, content) values (%s, 't', %s)"
            " returning id", (world.users[owner].id, content)).fetchone()["id"])
        conn.commit()
    return ids


def bulk_docs(conn, world, n):
    """n documents of three paragraphs about backups, in one statement (bulk), on an empty
    queue."""
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    paragraph = "Every nightly backup of the primary replica is checked by the team. " * 5
    ids = [r["id"] for r in conn.execute(
        "insert into public.documents (owner_id, title, content)"
        " select %s, 'bulk ' || i, repeat(%s, 3) from generate_series(1, %s) i returning id",
        (world.users["alice"].id, paragraph + "\n\n", n)).fetchall()]
    conn.commit()
    return ids


class Hooked:
    """The real model, with a hook run at the start of each call (the call's number, texts)."""

    def __init__(self, embedder, hook):
        self._embedder, self._hook = embedder, hook
        self.name, self.max_tokens = embedder.name, embedder.max_tokens
        self.count_tokens, self.split_tokens = embedder.count_tokens, embedder.split_tokens
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        self._hook(len(self.calls), texts)
        return self._embedder.embed(texts)

    def load(self):
        self._embedder.load()


def status(conn, ids):
    rows = conn.execute("select id, embedding_status from public.documents where id = any(%s)",
                        (ids,)).fetchall()
    return {r["id"]: r["embedding_status"] for r in rows}


def leased(conn, worker_id):
    return conn.execute("select count(*) as n from suparag_private.embedding_jobs"
                        " where leased_by = %s", (worker_id,)).fetchone()["n"]


def test_a_version_bump_while_the_batch_waits_in_the_pipeline_is_dropped(
        conn, world, db_url, embedder):
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    first, waiting, last = insert_docs(conn, world, ["first", "second, old", "third"])
    bumped, read = threading.Event(), threading.Event()

    def hook(call, texts):
        if call == 1:  # the first batch embeds; the second is claimed and read meanwhile
            assert read.wait(20), "the second batch was not read during the first's call"
            with connect(db_url) as other:
                other.execute("update public.documents set content = 'second, new'"
                              " where id = %s", (waiting,))
                other.commit()
                bumped.set()

    model = Hooked(embedder, hook)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=1))
    plan = worker._plan

    def planned(jobs, **kwargs):  # the documents of the waiting job have been read
        plans = plan(jobs, **kwargs)
        if any(job["document_id"] == waiting for job in jobs):
            read.set()
        return plans

    worker._plan = planned
    try:
        total = worker.drain()
    finally:
        worker.close()
    assert bumped.is_set()
    assert any("second, old" in t for call in model.calls for t in call)  # it was embedded...
    assert total.superseded >= 1  # ...and dropped
    rows = conn.execute("select content from public.document_chunks where document_id = %s",
                        (waiting,)).fetchall()
    assert [r["content"] for r in rows] == ["second, new"]
    assert set(status(conn, [first, waiting, last]).values()) == {"ready"}


def test_stopping_mid_pipeline_finishes_the_batch_in_hand_and_gives_back_the_next(
        conn, world, db_url, embedder):
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    ids = insert_docs(conn, world, [f"document {i}" for i in range(6)])
    stop = threading.Event()

    def hook(call, texts):
        if call == 1:
            stop.set()  # SIGTERM while the first batch embeds and the second waits

    worker = EmbeddingWorker(db_url, Hooked(embedder, hook),
                             config=WorkerConfig(batch_size=1))
    given_back = []
    release = worker.release

    def watched_release(batch):
        given_back.extend(plan.job["document_id"] for plan in batch.ready)
        return release(batch)

    worker.release = watched_release
    try:
        total = worker.drain(should_stop=stop.is_set)
    finally:
        worker.close()
    done = status(conn, ids)
    ready = [i for i in ids if done[i] == "ready"]
    assert len(given_back) == 1 and given_back[0] not in ready
    # The batch in hand is written; the one already claimed behind it is given back (its
    # lease and its attempt undone, below), so a stop waits for one claim, not two.
    assert total.embedded == len(ready) == 1
    assert leased(conn, worker.config.worker_id) == 0
    rest = conn.execute("select document_id, attempts, leased_by from"
                        " suparag_private.embedding_jobs where document_id = any(%s)",
                        (ids,)).fetchall()
    assert {r["document_id"] for r in rest} == set(ids) - set(ready)
    assert all(r["attempts"] == 0 and r["leased_by"] is None for r in rest)


def test_leases_are_renewed_while_a_batch_waits_behind_a_slow_model_call(
        conn, world, db_url, embedder):
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    insert_docs(conn, world, ["slow one", "slow two", "slow three"])
    # Renewed every third of the lease: 2 s leaves a slow machine 1.3 s of slack a renewal.
    config = WorkerConfig(batch_size=1, lease_seconds=2)
    expired: list[int] = []

    def hook(call, texts):
        time.sleep(4.0)  # longer than the 2 s lease; the next batch waits behind this call
        with connect(db_url) as other:  # what another worker's claim would take from us
            expired.append(other.execute(
                "select count(*) as n from suparag_private.embedding_jobs"
                " where leased_by = %s and leased_until < now()",
                (config.worker_id,)).fetchone()["n"])

    worker = EmbeddingWorker(db_url, Hooked(embedder, hook), config=config)
    try:
        total = worker.drain()
    finally:
        worker.close()
    assert total.embedded == 3
    assert expired == [0, 0, 0]


def test_model_calls_never_exceed_the_budget_but_for_one_oversize_text():
    texts = ["w " * n for n in (5, 300, 40, 2, 90, 90, 7, 1000, 33, 60, 1, 18)]

    def count(text):
        return len(text.split())

    for budget in (64, 128, 256, 1000):
        calls = model_calls(texts, count, budget=budget)
        assert sorted(i for call in calls for i in call) == list(range(len(texts)))
        for call in calls:
            cost = padded_cost([count(texts[i]) + SPECIAL_TOKENS for i in call])
            assert cost <= budget or len(call) == 1
        # Sorted by length, so calls pad little.
        lengths = [count(texts[i]) for call in calls for i in call]
        assert lengths == sorted(lengths)
    assert model_calls(texts, count, budget=10_000, max_texts=5)[0] == [10, 3, 0, 6, 11]


def test_the_worker_sizes_its_model_calls_by_tokens(conn, world, db_url, embedder):
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    paragraph = "The quick brown fox jumps over the lazy dog near the river bank. " * 6
    contents = ["\n\n".join(f"Note {d}.{p}: {paragraph}" for p in range(n))
                for d, n in enumerate((1, 3, 8, 2, 5, 1, 12, 4))]  # no two chunks alike
    ids = insert_docs(conn, world, contents)
    model = Hooked(embedder, lambda call, texts: None)
    budget = 600
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=8),
                             token_budget=budget)
    try:
        worker.drain()
    finally:
        worker.close()
    assert set(status(conn, ids).values()) == {"ready"}
    assert len(model.calls) > 1
    for call in model.calls:
        cost = padded_cost([embedder.count_tokens(t) + SPECIAL_TOKENS for t in call])
        assert cost <= budget or len(call) == 1, (cost, len(call))


@pytest.mark.parametrize("arrival", ["one statement", "a transaction each"])
def test_a_claim_takes_several_budgets_and_sorts_their_texts_together(
        conn, world, db_url, embedder, arrival):
    """Bulk jobs, or a backlog of interactive ones (a script inserting documents one at a
    time): both are claimed several budgets at a time. A few interactive jobs go alone."""
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    contents = ["\n\n".join(f"Note {d}.{p}: " + sentence * (2 + p % 5) for p in range(n))
                for d, n in enumerate((1, 3, 8, 2, 5, 1, 12, 4))]  # no two chunks alike
    if arrival == "one statement":  # bulk jobs
        ids = [r["id"] for r in conn.execute(
            "insert into public.documents (owner_id, title, content)"
            " select %s, 't', c from unnest(%s::text[]) c returning id",
            (world.users["alice"].id, contents)).fetchall()]
        conn.commit()
    else:  # interactive jobs, more than a budget of them
        ids = insert_docs(conn, world, contents)
    model = Hooked(embedder, lambda call, texts: None)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=64),
                             token_budget=600, claim_budgets=8)
    try:
        worker.run_batch()  # one claim, full size (a drain's first is small: below)
    finally:
        worker.close()
    assert set(status(conn, ids).values()) == {"ready"}
    assert len(model.calls) > 2
    # One claim of all eight documents: every call's texts follow the last call's in
    # length, across documents (a claim of one budget restarts the order per claim).
    lengths = [embedder.count_tokens(t) for call in model.calls for t in call]
    assert lengths == sorted(lengths)


def test_a_drain_opens_with_a_small_claim_and_then_claims_full_size(
        conn, world, db_url, embedder):
    """The model waits for a drain's first claim, so it is a few budgets; the full claim
    behind it is prepared while the model embeds."""
    ids = bulk_docs(conn, world, 24)
    model = Hooked(embedder, lambda call, texts: None)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=64),
                             token_budget=600, claim_budgets=16)
    claims: list[tuple[bool, int]] = []  # (opening, documents claimed)
    prepare = worker.prepare

    def watched(opening=False):
        batch = prepare(opening)
        if batch is not None:
            claims.append((opening, len(batch.jobs)))
        return batch

    worker.prepare = watched
    try:
        worker.drain()
    finally:
        worker.close()
    assert set(status(conn, ids).values()) == {"ready"}
    # A first guess of 512 tokens a document: 4 budgets of 600 are 5 documents, 16 are 19.
    assert claims[0] == (True, 5)
    assert claims[1] == (False, 19)
    assert sum(n for _, n in claims) == 24 and all(not opening for opening, _ in claims[1:])


def test_an_edit_committed_during_a_big_bulk_claim_is_embedded_between_its_calls(
        conn, world, db_url, embedder):
    bulk = bulk_docs(conn, world, 16)
    urgent: list[object] = []

    def hook(call, texts):
        time.sleep(0.2)  # a model call long enough for the database thread's question
        if call == 1:
            time.sleep(1.0)  # the claim behind this batch (nothing is left) has run
            urgent.extend(insert_docs(conn, world, ["an urgent single edit"]))

    model = Hooked(embedder, hook)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=64),
                             token_budget=600, claim_budgets=32)
    try:
        total = worker.drain()
    finally:
        worker.close()
    assert total.embedded == len(bulk) + 1
    assert set(status(conn, [*bulk, *urgent]).values()) == {"ready"}
    edit = next(i for i, call in enumerate(model.calls) if any("urgent" in t for t in call))
    bulk_calls = [i for i, call in enumerate(model.calls)
                  if any("nightly backup" in t for t in call)]
    assert len(bulk_calls) >= 4  # the bulk documents were one claim of many calls...
    assert bulk_calls[0] < edit < bulk_calls[-1]  # ...and the edit did not wait for it


def drain_with_an_edit_at_the_third_call(conn, world, db_url, embedder, hints, monkeypatch,
                                         *, wait=None):
    """A bulk drain (one model call at a time, 0.1 s each) with an edit inserted at the start
    of its third call, then wait(hints before the edit) called; with worker.hints set to
    hints. The bulk documents, the edit, the model's calls, and the call count at each
    question asked on the urgent thread (with the time the drain decided to ask)."""
    # Each boundary waits for its question's answer (about a millisecond; 50 ms at most in
    # the worker, beyond which the next boundary takes it): the count read on the urgent
    # thread is then the calls made before that boundary, however slow the machine.
    monkeypatch.setattr(pipeline, "PATIENCE", 10.0)
    decided: list[float] = []  # when the drain decided to ask, as _WorthAsking saw it
    worth_asking = pipeline._WorthAsking.__call__

    def recorded(self):
        ask = worth_asking(self)
        if ask:
            decided.append(time.monotonic() if self._hinted is None else self._asked_at)
        return ask

    monkeypatch.setattr(pipeline._WorthAsking, "__call__", recorded)
    bulk = bulk_docs(conn, world, 32)
    edit: list[int] = []

    def hook(call, texts):
        time.sleep(0.1)
        if call == 3:
            before = hints()
            edit.extend(insert_docs(conn, world, ["an urgent single edit"]))
            if wait is not None:
                wait(before)

    model = Hooked(embedder, hook)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=64),
                             token_budget=600, claim_budgets=32)
    worker.hints = hints
    asked: list[int] = []
    question = worker.prepare_urgent

    def counted():
        if threading.current_thread().name.startswith("suparag-embedding-urgent"):
            asked.append((len(model.calls), decided[-1]))
        return question()

    worker.prepare_urgent = counted
    try:
        total = worker.drain()
    finally:
        worker.close()
    assert total.embedded == len(bulk) + 1
    assert set(status(conn, [*bulk, *edit]).values()) == {"ready"}
    return bulk, edit, model.calls, asked


def edit_between_bulk_calls(calls):
    edit = next(i for i, call in enumerate(calls) if any("urgent" in t for t in call))
    bulk_calls = [i for i, call in enumerate(calls) if any("nightly backup" in t for t in call)]
    assert len(bulk_calls) >= 8
    return bulk_calls[0] < edit < bulk_calls[-1]


def test_with_wake_up_hints_a_drain_asks_about_edits_once_and_then_when_one_comes(
        conn, world, db_url, embedder, monkeypatch):
    """Asked between every two model calls, "is an interactive job due?" kept the lane that
    had just finished waiting about a millisecond each time (0.6% of the model's time). With
    a source of wake-up hints (here a real LISTEN: an enqueue notifies), a drain asks at its
    first boundary, then only when a hint has come: the edit's. The edit still goes between
    the bulk calls."""
    monkeypatch.setattr(pipeline, "RECHECK_SECONDS", 60.0)  # hints alone, in this test
    wakeups, stopping = Wakeups([EMBEDDINGS]), threading.Event()
    listener = Listener(db_url, wakeups, stopping)
    listener.start()
    try:
        assert listener.listening.wait(10)
        hints = functools.partial(wakeups.hints, EMBEDDINGS)

        def the_hint_arrives(before):
            deadline = time.monotonic() + 10
            while hints() == before and time.monotonic() < deadline:
                time.sleep(0.01)

        _, _, calls, asked = drain_with_an_edit_at_the_third_call(
            conn, world, db_url, embedder, hints, monkeypatch, wait=the_hint_arrives)
    finally:
        stopping.set()
        listener.join(timeout=5)
    assert edit_between_bulk_calls(calls)
    # Before the first call; before the fourth, the hint having come in the third.
    assert [calls_before for calls_before, _ in asked] == [0, 3]


def test_hints_that_never_come_leave_an_edit_waiting_at_most_the_recheck(
        conn, world, db_url, embedder, monkeypatch):
    """A hint can be lost (a LISTEN connection drops): a drain asks again RECHECK_SECONDS
    after it last asked, hint or not, and the edit goes between the bulk calls."""
    monkeypatch.setattr(pipeline, "RECHECK_SECONDS", 0.5)
    _, _, calls, asked = drain_with_an_edit_at_the_third_call(
        conn, world, db_url, embedder, lambda: 0, monkeypatch)
    assert edit_between_bulk_calls(calls)
    assert 2 <= len(asked) < len(calls)  # not at every boundary (0.1 s or more a call) ...
    times = [at for _, at in asked]  # when the drain decided: at least a recheck apart
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.5


def test_while_the_source_of_hints_is_not_connected_a_drain_asks_at_every_boundary(
        conn, world, db_url, embedder, monkeypatch):
    """A LISTEN connection that is down hears nothing: the hint count is None then (the
    service's), and a drain asks before every model call, as with no source at all."""
    monkeypatch.setattr(pipeline, "RECHECK_SECONDS", 60.0)
    _, _, calls, asked = drain_with_an_edit_at_the_third_call(
        conn, world, db_url, embedder, lambda: None, monkeypatch)
    assert edit_between_bulk_calls(calls)
    # Each bulk boundary (the edit's own call, taken inside one, asks nothing).
    assert len(asked) >= len(calls) - 2


def test_a_claim_made_while_edits_are_due_takes_the_edits_alone(conn, world, db_url, embedder):
    """Filled up with bulk jobs, an edit would wait for a whole claim of bulk model calls;
    a claim made while interactive jobs are due takes those alone, and the bulk work the
    next time."""
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    bulk = {r["id"] for r in conn.execute(
        "insert into public.documents (owner_id, title, content)"
        " select %s, 'bulk ' || i, 'a bulk document' from generate_series(1, 16) i"
        " returning id", (world.users["alice"].id,)).fetchall()}  # one statement: bulk
    conn.commit()
    edits = set(insert_docs(conn, world, ["an edit", "another edit"]))
    worker = EmbeddingWorker(db_url, embedder, config=WorkerConfig(batch_size=64))
    try:
        first = worker.prepare()
        assert first is not None and worker.urgent(first)
        assert {job["document_id"] for job in first.jobs} == edits
        second = worker.prepare()
        assert second is not None and not worker.urgent(second)
        assert {job["document_id"] for job in second.jobs} == bulk
        for batch in (first, second):
            worker.finish(batch, worker.embed(batch))
    finally:
        worker.close()
    assert set(status(conn, [*bulk, *edits]).values()) == {"ready"}


def test_an_edit_is_written_while_the_database_thread_is_busy_with_bulk_work(
        conn, world, db_url, embedder):
    """The question "is an interactive job due?" and the edit's write-back go through a
    second connection on a thread of their own: with one thread, they waited behind the
    next bulk claim's read and chunking (and the last one's write-back), hundreds of
    documents each at the default claim size. Here that read is held until the edit is
    written (30 s at most)."""
    bulk = bulk_docs(conn, world, 24)
    urgent: list[object] = []
    slow_read: dict[str, float] = {}
    written: dict[object, float] = {}
    reading, edit_written = threading.Event(), threading.Event()

    def hook(call, texts):
        time.sleep(0.2)  # model calls long enough for the questions between them
        if call == 1:
            assert reading.wait(20), "the next bulk claim's read never began"
            urgent.extend(insert_docs(conn, world, ["an urgent single edit"]))

    model = Hooked(embedder, hook)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=64),
                             token_budget=600, claim_budgets=4)
    plan, write = worker._plan, worker._write

    bulk_reads: list[int] = []

    def slow_plan(jobs, **kwargs):
        if any(j["document_id"] in bulk for j in jobs):
            bulk_reads.append(len(jobs))
        if len(bulk_reads) == 2 and "start" not in slow_read:  # the second bulk claim
            slow_read["start"] = time.monotonic()
            reading.set()
            edit_written.wait(30)  # held: a write queued behind it would never come
            slow_read["end"] = time.monotonic()
        return plan(jobs, **kwargs)

    def timed_write(plans):
        result = write(plans)
        written.update((p.job["document_id"], time.monotonic()) for p in plans)
        if urgent and urgent[0] in written:
            edit_written.set()
        return result

    worker._plan, worker._write = slow_plan, timed_write
    try:
        worker.drain()
    finally:
        worker.close()
    assert set(status(conn, [*bulk, *urgent]).values()) == {"ready"}
    assert "end" in slow_read, "the second bulk claim was never read"
    # The edit was embedded and written while the bulk claim's read still held the
    # first connection's thread.
    assert slow_read["start"] < written[urgent[0]] < slow_read["end"]


def test_an_edit_goes_between_the_calls_of_a_second_space_too(conn, world, db_url, embedder):
    """While a second space is live, a bulk batch is embedded in it after the first; those
    calls take interactive work between them as well (at 32 budgets a claim, they are
    seconds of model time)."""
    from worker.jobs.spaces import SpaceFiller
    from worker.spaces import add_space

    bulk = bulk_docs(conn, world, 16)
    with connect(db_url, autocommit=True) as admin:
        second = add_space(admin, "all-MiniLM-L6-v2", dimensions=384, name="minilm-second")
    urgent: list[object] = []
    in_second: list[int] = []  # model calls made in the second space

    def hook(call, texts):
        time.sleep(0.2)
        if in_second:
            in_second.append(call)
            if len(in_second) == 2 and not urgent:
                urgent.extend(insert_docs(conn, world, ["an urgent single edit"]))

    model = Hooked(embedder, hook)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(batch_size=64),
                             token_budget=600, claim_budgets=32)
    worker.spaces = SpaceFiller(make=lambda space: model)
    embed_in = worker.spaces.embed_in

    def marked(spaces, texts, **kwargs):
        bulk_phase = any("nightly backup" in t for t in texts)
        if bulk_phase:
            in_second.append(0)  # the hook counts calls from here
        try:
            return embed_in(spaces, texts, **kwargs)
        finally:
            if bulk_phase and not urgent:
                in_second.clear()

    worker.spaces.embed_in = marked
    try:
        worker.drain()
    finally:
        worker.close()
    assert urgent, "the second space's calls never ran"
    assert set(status(conn, [*bulk, *urgent]).values()) == {"ready"}
    edit = next(i for i, call in enumerate(model.calls) if any("urgent" in t for t in call))
    bulk_calls = [i for i, call in enumerate(model.calls)
                  if any("nightly backup" in t for t in call)]
    # The edit went before the bulk batch's last call in the second space ...
    assert edit < bulk_calls[-1]
    # ... and ended in both spaces.
    assert conn.execute(
        "select count(*) as n from suparag_search.chunk_vectors v"
        " join public.document_chunks c on c.id = v.chunk_id"
        " where v.space_id = %s and c.document_id = %s",
        (second.id, urgent[0])).fetchone()["n"] == 1


def test_a_backfill_runs_through_the_pipeline_and_lets_an_edit_between_its_calls(
        conn, world, db_url, embedder):
    """A space's backfill (issue 10) is a bulk batch of the pipeline: its chunks sorted by
    length into calls of the token budget, the next fill claimed while the model embeds
    this one, and an edit committed during a fill embedded between that fill's calls."""
    from worker.jobs.spaces import SpaceFiller
    from worker.spaces import add_space

    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    with conn.transaction():  # one transaction: bulk
        for i in range(24):
            conn.execute(
                "insert into public.documents (owner_id, title, content) values (%s, %s, %s)",
                (world.users["alice"].id, f"fill {i}",
                 f"Fill document {i}. " + "The replica is checked nightly. " * (i % 6 + 1)))
    conn.commit()
    filling = {"on": False}
    spans: list[tuple[float, float, list[str]]] = []  # the fill's model calls
    urgent: list[object] = []

    def hook(call, texts):
        if filling["on"]:
            time.sleep(0.15)
            if not urgent:
                urgent.extend(insert_docs(conn, world, ["an urgent single edit"]))

    model = Hooked(embedder, hook)
    worker = EmbeddingWorker(db_url, model, config=WorkerConfig(), token_budget=200)
    worker.spaces = SpaceFiller(make=lambda space: model, batch=12)
    try:
        worker.drain()  # the column space
        with connect(db_url, autocommit=True) as admin:
            second = add_space(admin, "all-MiniLM-L6-v2", dimensions=384, name="minilm-fill")
        fills: list[tuple[float, set[str]]] = []  # when each fill was claimed, its texts
        claim, embed = worker.spaces.claim, model.embed

        def claimed(*args, **kwargs):
            started = time.monotonic()
            fill = claim(*args, **kwargs)
            if fill is not None:
                fills.append((started, set(fill.texts.values())))
            return fill

        def timed(texts):
            started = time.monotonic()
            try:
                return embed(texts)
            finally:
                if filling["on"]:
                    spans.append((started, time.monotonic(), list(texts)))

        worker.spaces.claim, model.embed = claimed, timed
        filling["on"] = True
        worker.drain()
    finally:
        worker.close()
    assert urgent and len(fills) >= 2
    assert set(status(conn, urgent).values()) == {"ready"}
    assert conn.execute(
        "select count(*) filter (where v.chunk_id is null) as missing"
        " from public.document_chunks c left join suparag_search.chunk_vectors v"
        " on v.chunk_id = c.id and v.space_id = %s", (second.id,)).fetchone() == {
        "missing": 0}
    fill_calls = [s for s in spans if not any("urgent" in t for t in s[2])]
    # Calls of the token budget, each sorted by length, not one call per fill ...
    for _, _, texts in fill_calls:
        lengths = [model.count_tokens(t) + SPECIAL_TOKENS for t in texts]
        assert len(texts) == 1 or padded_cost(lengths) <= 200
    # ... the next fill claimed while the model embedded the one before ...
    assert any(start < at < end for at, _ in fills[1:] for start, end, _ in fill_calls)
    # ... and the edit went between two calls of the first fill.
    first = [i for i, s in enumerate(spans) if set(s[2]) <= fills[0][1]]
    edit = next(i for i, s in enumerate(spans) if any("urgent" in t for t in s[2]))
    assert first[0] < edit < first[-1]
