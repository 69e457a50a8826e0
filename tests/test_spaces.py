"""Embedding spaces (issue 10): add, backfill, activate, roll back, drop; RLS; the upgrade.

The second space is OpenAI-compatible, served by the HTTP-level double of
test_openai_embedder.py (deterministic word-hash vectors at the width asked
for); the first is the packaged MiniLM in document_chunks.embedding.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import READABLE, claims_of, http_double, unit_vector
from test_cli import DbCli
from test_openai_embedder import KEY, FakeOpenAI, _handler, word_vector

from worker import schema
from worker.db import connect
from worker.errors import ActivationRefused, ConfigError, SpaceNotReady
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.jobs.spaces import SpaceFiller
from worker.search import choose_embedder, retrieve, search
from worker.settings import Settings, get_settings
from worker.spaces import (
    Space,
    activate,
    add_space,
    coverage,
    drop_space,
    get_space,
    list_spaces,
    space_embedder,
)
from worker.users import add_user

MODEL = "openai/text-embedding-3-small"

DOCS = {
    "refunds": "Refunds are paid back to the original card within five working days.",
    "shipping": "Parcels ship from the warehouse every weekday morning by courier.",
    "holidays": "Staff holidays are booked through the leave calendar before March.",
}


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    with http_double(_handler(fake)) as fake.url:
        yield fake


def worker_for(db_url: str, embedder: Any, server: FakeOpenAI, *, backfill: int = 64
               ) -> EmbeddingWorker:
    """A worker whose table spaces' OpenAI embedders talk to the double."""
    settings = Settings(openai_api_key=KEY, openai_base_url=server.url)
    worker = EmbeddingWorker(db_url, embedder, config=WorkerConfig())
    worker.spaces = SpaceFiller(make=lambda space: space_embedder(space, settings),
                                batch=backfill)
    return worker


@pytest.fixture
def corpus(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Alice's three documents, queued for embedding; title -> document id."""
    alice = add_user(conn, "alice@example.com", team="a")
    ids = {}
    for title, content in DOCS.items():
        row = conn.execute(
            "insert into public.documents (owner_id, team, visibility, title, content)"
            " values (%s, 'a', 'private', %s, %s) returning id",
            (alice.id, title, content)).fetchone()
        assert row is not None
        ids[title] = row["id"]
    conn.commit()
    return {"alice": alice, "ids": ids}


def add(db_url: str, dimensions: int = 768, name: str | None = None) -> Space:
    with connect(db_url, autocommit=True) as admin:
        return add_space(admin, MODEL, dimensions=dimensions, name=name)


def vectors_in(conn: psycopg.Connection[Any], space: Space) -> dict[Any, int]:
    """document id -> vectors of its current chunks in space."""
    rows = conn.execute(
        "select c.document_id, count(v.chunk_id) as n from public.document_chunks c"
        " left join suparag_search.chunk_vectors v on v.chunk_id = c.id and v.space_id = %s"
        " group by c.document_id", (space.id,)).fetchall()
    conn.commit()
    return {r["document_id"]: r["n"] for r in rows}


def chunk_counts(conn: psycopg.Connection[Any]) -> dict[Any, int]:
    rows = conn.execute("select document_id, count(*) as n from public.document_chunks"
                        " group by document_id").fetchall()
    conn.commit()
    return {r["document_id"]: r["n"] for r in rows}


def search_as(conn: psycopg.Connection[Any], vector: list[float], claims: Any, **kw: Any
              ) -> list[str]:
    return [row["title"] for row in retrieve(conn, vector, claims=claims, model=None, k=3,
                                             **kw)]


def test_first_space_is_the_existing_column(conn):
    (space,) = list_spaces(conn)
    assert (space.name, space.model, space.dimensions, space.storage, space.state) == (
        "all-MiniLM-L6-v2", "all-MiniLM-L6-v2", 384, "column", "active")


def test_add_backfill_activate_roll_back_and_drop(conn, db_url, corpus, embedder, server,
                                                  monkeypatch):
    worker = worker_for(db_url, embedder, server)
    worker.drain()  # the column space, as before
    space = add(db_url)
    assert space.name == "text-embedding-3-small-768"
    assert [c.index_ready for c in coverage(conn, [space])] == [True]
    conn.commit()
    with pytest.raises(SpaceNotReady, match=r"covers 0\.0% of chunks"):
        activate(conn, space.name)

    server.requests.clear()
    total = worker.drain()  # nothing due: the backfill fills the new space
    assert total.backfilled == sum(chunk_counts(conn).values()) > 0
    assert all(r.body["dimensions"] == 768 for r in server.requests)
    assert vectors_in(conn, space) == chunk_counts(conn)
    (cover,) = coverage(conn, [space])
    assert cover.percent == 100.0
    conn.commit()

    alice = corpus["alice"].claims()
    question = "when are refunds paid back to the card"
    old = embedder.embed([question])[0]
    new = word_vector(question, 768)
    assert search_as(conn, old, alice)[0] == "refunds"
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match="has 768 dimensions; the active embedding space all-MiniLM-L6-v2 "
                             "takes 384"):
        search_as(conn, new, alice)
    conn.rollback()
    # A standby space is searched by name.
    assert search_as(conn, new, alice, space=space.name)[0] == "refunds"

    activate(conn, space.name)
    assert get_space(conn).name == space.name
    conn.commit()
    assert search_as(conn, new, alice)[0] == "refunds"
    hybrid = retrieve(conn, new, claims=alice, model=MODEL, k=3, hybrid_text=question)
    assert hybrid[0]["title"] == "refunds"
    # `suparag search` (and the answer worker) embed the query with the active space's model.
    monkeypatch.setenv("SUPARAG_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("SUPARAG_OPENAI_BASE_URL", server.url)
    get_settings.cache_clear()
    try:
        searcher = choose_embedder(conn)
        assert searcher.name == MODEL
        assert search(conn, searcher, question, claims=alice)[0].title == "refunds"
        assert choose_embedder(conn, space="all-MiniLM-L6-v2").name == embedder.name
    finally:
        get_settings.cache_clear()
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match="has 384 dimensions; the active embedding space "
                             "text-embedding-3-small-768 takes 768"):
        search_as(conn, old, alice)
    conn.rollback()

    # The old space stays live: an edit lands in both, so rolling back loses nothing.
    conn.execute("update public.documents set content = %s where id = %s",
                 ("Refunds now take ten working days to reach the card.",
                  corpus["ids"]["refunds"]))
    conn.commit()
    assert worker.drain().embedded == 1
    assert vectors_in(conn, space) == chunk_counts(conn)
    activate(conn, "all-MiniLM-L6-v2")
    assert search_as(conn, embedder.embed(["ten working days"])[0], alice)[0] == "refunds"

    with connect(db_url, autocommit=True) as admin:
        with pytest.raises(ConfigError, match="is active"):
            drop_space(admin, "all-MiniLM-L6-v2")
        drop_space(admin, space.name)
        assert [s.name for s in list_spaces(admin)] == ["all-MiniLM-L6-v2"]
        assert admin.execute("select count(*) as n from suparag_search.chunk_vectors"
                             ).fetchone() == {"n": 0}
        assert admin.execute("select to_regclass(%s) as i",
                             (f"suparag_search.{space.index_name}",)).fetchone() == {"i": None}


def test_edits_go_first_and_end_current_in_every_space(conn, db_url, corpus, embedder, server):
    worker = worker_for(db_url, embedder, server, backfill=1)
    worker.drain()
    space = add(db_url)
    # Part of the backfill, then an edit arrives.
    first = worker.run_batch()
    assert first.backfilled > 0 and first.embedded == 0
    conn.execute("update public.documents set content = %s where id = %s",
                 ("Holidays are now booked in the staff portal.", corpus["ids"]["holidays"]))
    conn.commit()
    edit = worker.run_batch()
    assert (edit.embedded, edit.backfilled) == (1, 0)  # the edit before the backfill
    worker.drain()
    assert vectors_in(conn, space) == chunk_counts(conn)
    rows = conn.execute(
        "select c.content, v.embedding from public.document_chunks c"
        " join suparag_search.chunk_vectors v on v.chunk_id = c.id and v.space_id = %s"
        " where c.document_id = %s", (space.id, corpus["ids"]["holidays"])).fetchall()
    assert [r["content"] for r in rows] == ["Holidays are now booked in the staff portal."]
    expected = word_vector("holidays\n\nHolidays are now booked in the staff portal.", 768)
    assert rows[0]["embedding"].to_list() == pytest.approx(expected, abs=1e-6)


def test_wrong_dimension_and_unknown_space_errors(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        conn.execute("select * from public.match_documents(%s::extensions.vector)",
                     (unit_vector(0, 768),))
    assert caught.value.diag.message_primary == (
        "query_embedding has 768 dimensions; the active embedding space all-MiniLM-L6-v2 "
        "takes 384")
    assert caught.value.diag.message_hint == (
        "embed the query with all-MiniLM-L6-v2, or name another space with `space`")
    conn.rollback()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no embedding space named x"):
        conn.execute("select * from public.match_documents(%s::extensions.vector, space => 'x')",
                     (unit_vector(0, 384),))


@pytest.mark.parametrize("dims", [8, 3072])
def test_rls_holds_in_a_table_space(conn, db_url, world, dims):
    """The RLS matrix against a non-default space, active and named (halfvec above 2,000)."""
    space = add(db_url, dimensions=dims, name=f"test-{dims}")
    conn.execute(
        "insert into suparag_search.chunk_vectors (space_id, chunk_id, embedding)"
        " select %s, c.id, %s::extensions.vector from public.document_chunks c",
        (space.id, unit_vector(0, dims)))
    conn.commit()
    query = [1.0] + [0.0] * (dims - 1)
    for named in (space.name, None):
        if named is None:
            activate(conn, space.name)
        for caller, readable in READABLE.items():
            titles = retrieve(conn, query, claims=claims_of(world, caller), model=None,
                              k=10, space=named)
            assert {r["title"] for r in titles} == readable, (caller, named)
            assert {r["score"] for r in titles} <= {1.0}
    # Direct reads of the vectors follow the chunks' policies too.
    with conn.transaction():
        conn.execute("set local role anon")
        rows = conn.execute("select count(*) as n from suparag_search.chunk_vectors").fetchone()
        assert rows == {"n": len(READABLE["anon"])}


def test_upgrade_keeps_the_vectors_and_embeds_nothing(empty_db_url, tmp_path, embedder):
    before = tmp_path / "migrations"
    before.mkdir()
    for migration in schema.discover():
        if migration.version < "20261202050000":
            shutil.copy(migration.path, before / migration.path.name)
    with connect(empty_db_url, autocommit=True) as conn:
        schema.apply_standin(conn)
        schema.push(conn, before)
        alice = add_user(conn, "alice@example.com", team="a")
        # What a worker of the previous release left: a ready document and its vector.
        row = conn.execute("insert into public.documents (owner_id, title, content)"
                           " values (%s, 'refunds', %s) returning id",
                           (alice.id, DOCS["refunds"])).fetchone()
        assert row is not None
        conn.execute("insert into public.document_chunks (document_id, chunk_index, content,"
                     " embedding, embedding_model, content_hash) values (%s, 0, %s, %s, %s, 'h')",
                     (row["id"], DOCS["refunds"], str(embedder.embed([DOCS["refunds"]])[0]),
                      embedder.name))
        conn.execute("update public.documents set embedding_status = 'ready' where id = %s",
                     (row["id"],))
        conn.execute("delete from suparag_private.embedding_jobs")

    class Counting:
        """The packaged model, counting its calls."""

        calls = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(embedder, name)

        def embed(self, texts: list[str]) -> list[list[float]]:
            Counting.calls += 1
            return embedder.embed(texts)

    with connect(empty_db_url, autocommit=True) as conn:
        applied = schema.push(conn)
        # This migration, and any that came after it.
        assert [m.version for m in applied] == [
            m.version for m in schema.discover() if m.version >= "20261202050000"]
        (space,) = list_spaces(conn)
        assert (space.name, space.storage, space.state) == ("all-MiniLM-L6-v2", "column",
                                                             "active")
        (cover,) = coverage(conn)
        assert cover.percent == 100.0 and cover.chunks > 0
        vector = embedder.embed(["refunds to the card"])[0]
        assert [r["title"] for r in retrieve(conn, vector, claims=alice.claims(),
                                             model=embedder.name)] == ["refunds"]
    upgraded = EmbeddingWorker(empty_db_url, Counting(), config=WorkerConfig())  # type: ignore[arg-type]
    assert upgraded.drain().claimed == 0
    assert Counting.calls == 0
    upgraded.close()


def test_add_refuses_a_taken_name_and_a_width_beyond_pgvector(db_url):
    add(db_url, name="second")
    with pytest.raises(ConfigError, match="named 'second' exists"):
        add(db_url, name="second")
    with pytest.raises(ConfigError, match="at most 4000"):
        add(db_url, dimensions=4096)


def test_migration_keeps_landed_function_callers(conn):
    """The old positional call hybrid_search used still resolves (five arguments)."""
    assert conn.execute(
        "select count(*) as n from public.match_documents(%s::extensions.vector, 5,"
        " '{}'::jsonb, null, null)", (unit_vector(0),)).fetchone() == {"n": 0}



def test_cli_add_list_activate_refused_and_drop(tmp_path, db_url, world):
    cli = DbCli(tmp_path, db_url)
    added = cli.json("spaces", "add", MODEL, "--dimensions", "768")
    assert added == {"name": "text-embedding-3-small-768", "model": MODEL, "dimensions": 768,
                     "state": "live"}
    listed = cli.json("spaces", "list")
    assert [(s["name"], s["state"], s["coverage"], s["index"]) for s in listed] == [
        ("all-MiniLM-L6-v2", "active", 100.0, "hnsw vector"),
        ("text-embedding-3-small-768", "live", 0.0, "hnsw vector")]
    refused = cli("spaces", "activate", "text-embedding-3-small-768", check=False)
    assert refused.returncode == 1
    assert "covers 0.0% of chunks (5 missing): wait for the backfill" in refused.stderr
    assert cli("spaces", "drop", "all-MiniLM-L6-v2", check=False).returncode == 1
    assert cli.json("spaces", "drop", "text-embedding-3-small-768") == {
        "dropped": "text-embedding-3-small-768", "storage": "table"}
    assert [s["name"] for s in cli.json("spaces", "list")] == ["all-MiniLM-L6-v2"]


def test_searches_never_fail_or_come_back_empty_across_switches(conn, db_url, corpus, embedder):
    """A same-width switch (the packaged MiniLM under a second name) under a search loop."""
    worker = EmbeddingWorker(db_url, embedder, config=WorkerConfig())
    worker.spaces = SpaceFiller(make=lambda space: embedder)
    worker.drain()
    with connect(db_url, autocommit=True) as admin:
        second = add_space(admin, "all-MiniLM-L6-v2", dimensions=384, name="minilm-again")
    assert worker.drain().backfilled == sum(chunk_counts(conn).values())
    vector = embedder.embed(["when are refunds paid back"])[0]
    claims = corpus["alice"].claims()
    stop = threading.Event()
    outcomes: list[Any] = []

    def search_loop() -> None:
        with connect(db_url) as reader:
            while not stop.is_set():
                try:
                    outcomes.append([r["title"] for r in retrieve(reader, vector, claims=claims,
                                                                  model=None, k=3)])
                except Exception as exc:  # recorded, asserted below
                    outcomes.append(exc)
                    reader.rollback()

    thread = threading.Thread(target=search_loop)
    thread.start()
    try:  # 20 switches at least, and until the loop has searched more than 10 times
        deadline, switches = time.monotonic() + 60, 0
        while ((switches < 20 or len(outcomes) <= 10 or switches % 2)
               and time.monotonic() < deadline):
            activate(conn, (second.name, "all-MiniLM-L6-v2")[switches % 2])
            switches += 1
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join()
    assert len(outcomes) > 10
    assert [o for o in outcomes if isinstance(o, Exception) or not o] == []
    assert {o[0] for o in outcomes} == {"refunds"}


def test_activate_is_refused_when_evaluation_scores_the_space_lower(conn, db_url):
    """Issues 10 and 11: the gate reads each space's latest `suparag eval run` on the same
    set; a worse candidate is refused with the margin, unless forced."""
    first = get_space(conn)
    conn.commit()  # CREATE INDEX CONCURRENTLY waits for every open transaction
    with connect(db_url, autocommit=True) as admin:
        second = add_space(admin, "all-MiniLM-L6-v2", dimensions=384, name="minilm-twin")
    for space, ndcg in ((first.name, 0.80), (second.name, 0.71)):
        conn.execute(
            "insert into suparag_private.eval_runs (set_name, set_digest, space,"
            " embedding_model, mode, k, queries, scored, metrics) values ('faq.jsonl', %s, %s,"
            " 'm', 'semantic', 10, 1, 1, %s::jsonb)",
            ("d" * 64, space, json.dumps({"ndcg@10": ndcg})))
    conn.commit()
    with pytest.raises(ActivationRefused, match=r"0\.0900 below"):
        activate(conn, second.name)
    assert get_space(conn).name == first.name
    assert activate(conn, second.name, force=True).name == second.name


def test_vectors_carry_their_document_so_their_policy_is_one_hop(conn, db_url, world):
    """Migration 090000: chunk_vectors.document_id (set by a trigger) is what its policy asks,
    and a table space's candidates come from chunk_vectors alone (issue 10's RLS cost)."""
    space = add(db_url, dimensions=8, name="one-hop")
    conn.execute(  # writers do not name the document: the trigger fills it
        "insert into suparag_search.chunk_vectors (space_id, chunk_id, embedding)"
        " select %s, c.id, %s::extensions.vector from public.document_chunks c",
        (space.id, unit_vector(0, 8)))
    conn.commit()
    wrong = conn.execute(
        "select count(*) as n from suparag_search.chunk_vectors v"
        " join public.document_chunks c on c.id = v.chunk_id"
        " where v.document_id is distinct from c.document_id").fetchone()
    assert wrong == {"n": 0}
    policies = conn.execute(
        "select qual from pg_policies where schemaname = 'suparag_search'"
        " and tablename = 'chunk_vectors' and not 'suparag_worker' = any(roles)").fetchall()
    assert len(policies) == 2
    for policy in policies:
        assert "documents" in policy["qual"] and "document_chunks" not in policy["qual"]
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="document_chunks"):
        conn.execute("insert into suparag_search.chunk_vectors (space_id, chunk_id, embedding)"
                     " values (%s, -1, %s::extensions.vector)", (space.id, unit_vector(0, 8)))
    conn.rollback()
    # The plan of a broad reader's search: HNSW over the space's index, no chunk
    # policy below the limit (chunks are joined for the k rows returned).
    source = conn.execute("select prosrc from pg_proc where proname = 'match_documents'"
                          ).fetchone()["prosrc"]
    conn.commit()
    assert "suparag_search.chunk_vectors v" in source and "join %s" not in source.split(
        "with nearest")[-1]
    for caller, readable in READABLE.items():
        titles = retrieve(conn, [1.0] + [0.0] * 7, claims=claims_of(world, caller),
                          model=None, k=10, space=space.name)
        assert {r["title"] for r in titles} == readable, caller


def test_status_shows_rate_eta_and_failures(tmp_path, conn, db_url, corpus, embedder, server):
    worker = worker_for(db_url, embedder, server, backfill=2)
    try:
        worker.drain()  # the column space first; the table space comes after
        space = add(db_url, dimensions=768, name="filling")
        assert worker.run_batch().backfilled == 2
        cli = DbCli(tmp_path, db_url)
        (row,) = cli.json("spaces", "status", "filling")
        assert (row["vectors"], row["missing"]) == (2, 1)
        assert row["rate_per_s"] == round(2 / 60, 2) and row["eta_s"] == 30.0
        assert row["failures"] == 0 and row["last_error"] is None
        server.always = 400  # the standby's model fails: counted, shown, retried later
        assert worker.run_batch().backfilled == 0
        (row,) = cli.json("spaces", "status", "filling")
        assert row["failures"] == 1 and "400" in row["last_error"] and row["missing"] == 1
        line = cli("spaces", "status", "filling").stdout
        assert "66.7% (2/3 chunks, 1 to go), 0.03 vectors/s over the last minute, ETA 30s" \
            in " ".join(line.split()) and "1 failures" in line
        server.always = None
        assert worker.run_batch().backfilled == 1  # the failed chunk is tried again
        (row,) = cli.json("spaces", "status", space.name)
        assert (row["missing"], row["eta_s"], row["coverage"]) == (0, 0.0, 100.0)
    finally:
        worker.close()


def column_vectors(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) as n from public.document_chunks"
                       " where embedding is not null").fetchone()
    conn.commit()
    return row["n"]


def test_the_first_space_is_dropped_after_a_switch(tmp_path, conn, db_url, corpus, embedder,
                                                   server):
    """Switch to a table space, then drop the column: the drop waits for a write-back in
    flight, nulls every column vector, and the worker then embeds into table spaces only."""
    column_model = "all-MiniLM-L6-v2"  # the first space's name
    held, release = threading.Event(), threading.Event()

    class Counting:
        """The worker's own model (it still cuts the chunks), counting its embed calls."""

        calls = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(embedder, name)

        def embed(self, texts: list[str]) -> list[list[float]]:
            Counting.calls += 1
            return embedder.embed(texts)

    worker = worker_for(db_url, Counting(), server)
    worker.drain()
    space = add(db_url)
    worker.drain()  # the backfill
    activate(conn, space.name)
    conn.commit()
    assert column_vectors(conn) == sum(chunk_counts(conn).values()) > 0

    # A write-back in flight (prepared while the column was live) holds the drop up.
    write = worker.spaces.write

    def held_write(*args: Any, **kwargs: Any) -> None:
        held.set()
        assert release.wait(30)
        write(*args, **kwargs)

    worker.spaces.write = held_write  # type: ignore[method-assign]
    conn.execute("update public.documents set content = %s where id = %s",
                 ("Refunds now take ten working days to reach the card.",
                  corpus["ids"]["refunds"]))
    conn.commit()
    edited = threading.Thread(target=worker.run_batch)
    edited.start()
    assert held.wait(30)
    progress: list[tuple[int, int]] = []
    dropped: list[Space] = []

    def drop() -> None:
        with connect(db_url, autocommit=True) as admin:
            try:
                dropped.append(drop_space(admin, column_model, batch=2,
                                          progress=lambda *p: progress.append(p)))
            except Exception as exc:
                dropped.append(exc)  # type: ignore[arg-type]

    dropping = threading.Thread(target=drop)
    dropping.start()
    time.sleep(0.5)
    assert dropping.is_alive() and not progress, dropped  # waiting for the write-back
    release.set()
    edited.join(30)
    dropping.join(60)
    worker.spaces.write = write  # type: ignore[method-assign]
    assert [s.state for s in dropped] == ["dropped"]
    assert progress[-1][0] == progress[-1][1] == sum(chunk_counts(conn).values())
    assert len(progress) > 2  # two chunks a transaction
    assert column_vectors(conn) == 0
    assert conn.execute("select to_regclass('public.document_chunks_embedding_idx') as i"
                        ).fetchone() == {"i": None}
    assert [(s.name, s.state) for s in list_spaces(conn)] == [
        (space.name, "active"), (column_model, "dropped")]
    conn.commit()

    # Searches: the active space as before; the dropped one by name is a clear error.
    alice = corpus["alice"].claims()
    assert search_as(conn, word_vector("ten working days", 768), alice)[0] == "refunds"
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match=f"the embedding space {column_model} was dropped"):
        search_as(conn, embedder.embed(["refunds"])[0], alice, space=column_model)
    conn.rollback()
    with pytest.raises(SpaceNotReady, match="was dropped and its vectors are gone"):
        activate(conn, column_model)
    conn.rollback()
    with pytest.raises(ConfigError, match="names the first space, dropped"):
        add(db_url, name=column_model)

    # An edit now: the worker's model makes no vector; the active space's does.
    Counting.calls = 0
    server.requests.clear()
    conn.execute("update public.documents set content = %s where id = %s",
                 ("Parcels now ship twice a day, morning and evening.",
                  corpus["ids"]["shipping"]))
    conn.commit()
    done = worker.drain()
    assert (done.embedded, done.failed, done.retrying) == (1, 0, 0)
    assert done.chunks_embedded >= 1
    assert Counting.calls == 0 and len(server.requests) >= 1
    assert column_vectors(conn) == 0
    assert vectors_in(conn, space) == chunk_counts(conn)
    row = conn.execute("select embedding_model from public.documents where id = %s",
                       (corpus["ids"]["shipping"],)).fetchone()
    conn.commit()
    assert row == {"embedding_model": MODEL}
    assert search_as(conn, word_vector("twice a day morning and evening", 768),
                     alice)[0] == "shipping"

    # Again: nothing left to do, and the CLI says what it did.
    cli = DbCli(tmp_path, db_url)
    assert cli.json("spaces", "drop", column_model) == {"dropped": column_model,
                                                        "storage": "column"}
    listed = {s["name"]: s for s in cli.json("spaces", "list")}
    assert (listed[column_model]["state"], listed[column_model]["index"]) == ("dropped",
                                                                             "dropped")
    assert "dropped" in cli("spaces", "status", "--once").stdout
    worker.close()


def test_a_poison_document_fails_alone_in_an_active_table_space(conn, db_url, corpus,
                                                               embedder, server):
    """With a table space active, its model failing on one document fails that one only."""
    worker = worker_for(db_url, embedder, server)
    worker.drain()
    space = add(db_url)
    worker.drain()
    activate(conn, space.name)
    conn.commit()
    for title in DOCS:
        conn.execute("update public.documents set content = content || %s where id = %s",
                     (" Poisoned." if title == "holidays" else " Updated.",
                      corpus["ids"][title]))
    conn.commit()
    server.refuse = "Poisoned."  # the active space's model rejects that document's text
    done = worker.run_batch()
    assert (done.embedded, done.retrying, done.failed) == (2, 1, 0)
    rows = conn.execute("select title, embedding_status from public.documents").fetchall()
    conn.commit()
    assert {r["title"]: r["embedding_status"] for r in rows} == {
        "refunds": "ready", "shipping": "ready", "holidays": "pending"}
