"""match_documents' plan scales with the table and with k (issue 17, "A million chunks").

The plan's numbers come from suparag_search.search_plan(k, vectors, documents),
fed by the catalog's estimates (pg_class.reltuples). The exact scan serves a
reader of fewer than max(3000, 3 * sqrt(k * N)) chunks; the landed constant
3,000 was right at 100,000 chunks and k = 10 only. Here a reader of 3,500
chunks in a space of 4,000 must get the exact plan for k = 500 (threshold
4,243) and HNSW for k = 10 (threshold 3,000): which plan ran is read from the
HNSW index's scan counter in the same transaction.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import psycopg
import pytest

from worker.db import set_request_context
from worker.spaces import Space, index_sql
from worker.users import add_user

DIMS = 384
DOCS, PER_DOC = 400, 10  # 4,000 chunks
ALICE_DOCS = 350  # 3,500 readable chunks for alice


def plan(conn: psycopg.Connection[Any], k: int, vectors: float | None,
         documents: float | None = None) -> dict[str, int]:
    row = conn.execute("select * from suparag_search.search_plan(%s, %s, %s)",
                       (k, vectors, documents)).fetchone()
    assert row is not None
    return dict(row)


def test_unknown_sizes_keep_the_landed_plan(conn):
    """Before the first ANALYZE reltuples is -1 (0 here): the constants measured at 100k."""
    assert plan(conn, 10, 0) == plan(conn, 10, None) == {
        "exact_scan_chunks": 3000, "exact_scan_documents": 500, "ef_search": 100,
        "max_scan_tuples": 20000}
    # ... and at the size they were measured at, the same chunk threshold and ef_search.
    at_100k = plan(conn, 10, 100_000, 10_000)
    assert at_100k["exact_scan_chunks"] == 3000 and at_100k["ef_search"] == 100


@pytest.mark.parametrize("k", [10, 20, 100, 1000])
def test_the_exact_scan_threshold_grows_as_sqrt_of_k_times_n(conn, k):
    previous = None
    for n in (1e4, 1e5, 3e5, 1e6, 1e7, 1e8):
        p = plan(conn, k, n, n / 10)
        assert p["exact_scan_chunks"] == max(3000, math.ceil(3 * math.sqrt(k * n)))
        # documents counted first: the chunk threshold over the chunks per document
        assert p["exact_scan_documents"] == math.ceil(p["exact_scan_chunks"] / 10)
        # ef_search: at least k, grows with the table, never past pgvector's 1,000
        assert min(k, 1000) <= p["ef_search"] <= 1000
        # a reader on the HNSW plan reads >= exact_scan_chunks of n, so the iterative
        # scan visits about k * n / exact_scan_chunks rows before k pass: allowed twice that
        assert p["max_scan_tuples"] >= 2 * k * n / p["exact_scan_chunks"]
        assert p["max_scan_tuples"] >= 20000
        if previous is not None:
            assert p["exact_scan_chunks"] >= previous["exact_scan_chunks"]
            assert p["ef_search"] >= previous["ef_search"]
        previous = p
    # at a million chunks and k = 10 the exact scan takes the 1% reader's 10,000 chunks
    # no more (the HNSW plan, with ef_search well above the landed 100)
    at_1m = plan(conn, 10, 1e6, 1e5)
    assert at_1m["exact_scan_chunks"] == 9487 and at_1m["ef_search"] > 100


def clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    centers = rng.normal(0, 1, (16, DIMS))
    v = centers[rng.integers(0, 16, n)] + rng.normal(0, 0.6, (n, DIMS)) / np.sqrt(DIMS)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


@pytest.fixture(params=["column", "table"])
def space(conn, request) -> tuple[str | None, str, Any]:
    """4,000 chunks in 400 documents, 350 of them alice's; the space's name (None: the
    column space), its HNSW index, and alice's claims."""
    alice = add_user(conn, "alice@example.com", team="a")
    bob = add_user(conn, "bob@example.com", team="b")
    ids = [uuid.uuid4() for _ in range(DOCS)]
    with conn.cursor().copy("copy public.documents (id, owner_id, visibility, title, content)"
                            " from stdin") as copy:
        for i, doc_id in enumerate(ids):
            copy.write_row((doc_id, alice.id if i < ALICE_DOCS else bob.id, "private", "t", "c"))
    index_def = conn.execute("select indexdef from pg_indexes"
                             " where indexname = 'document_chunks_embedding_idx'"
                             ).fetchone()["indexdef"]
    conn.execute("drop index public.document_chunks_embedding_idx")
    rng = np.random.default_rng(5)
    with conn.cursor().copy("copy public.document_chunks (document_id, chunk_index, content,"
                            " embedding, embedding_model, content_hash) from stdin") as copy:
        for i, v in enumerate(clustered(rng, DOCS * PER_DOC)):
            copy.write_row((ids[i // PER_DOC], i % PER_DOC, "chunk",
                            "[" + ",".join(f"{x:.6f}" for x in v) + "]", "m", "h"))
    conn.execute(index_def)
    name, index = None, "public.document_chunks_embedding_idx"
    if request.param == "table":
        row = conn.execute(
            "insert into suparag_private.embedding_spaces (name, provider, model, dimensions)"
            " values ('wide', 'sentence-transformers', 'm', %s)"
            " returning id, name, provider, model, dimensions, storage, state, options",
            (DIMS,)).fetchone()
        conn.execute("insert into suparag_search.chunk_vectors (space_id, chunk_id, embedding)"
                     " select %s, c.id, c.embedding from public.document_chunks c",
                     (row["id"],))
        conn.commit()
        conn.autocommit = True
        try:
            conn.execute(index_sql(Space(**row)))
        finally:
            conn.autocommit = False
        name, index = "wide", f"suparag_search.{Space(**row).index_name}"
    conn.execute("analyze")
    conn.commit()
    return name, index, alice.claims()


def run_as(conn: psycopg.Connection[Any], claims: dict[str, Any], index: str, k: int,
           space: str | None) -> tuple[int, int, tuple[str, str]]:
    """Rows match_documents returns to claims, how many scans of index it made, and
    hnsw.ef_search / max_scan_tuples after it returned; rolled back."""
    query = "[" + ",".join(["0.05"] * DIMS) + "]"
    with conn.transaction(force_rollback=True):
        set_request_context(conn, claims)
        conn.execute("set local hnsw.ef_search = 41")
        conn.execute("set local hnsw.max_scan_tuples = 1234")
        before = conn.execute("select pg_stat_get_xact_numscans(%s::regclass) as n",
                              (index,)).fetchone()["n"]
        rows = conn.execute("select chunk_id from public.match_documents("
                            "%s::extensions.vector, %s, space => %s)",
                            (query, k, space)).fetchall()
        after = conn.execute(
            "select pg_stat_get_xact_numscans(%s::regclass) as n,"
            " current_setting('hnsw.ef_search') as ef,"
            " current_setting('hnsw.max_scan_tuples') as tuples", (index,)).fetchone()
    return len(rows), after["n"] - before, (after["ef"], after["tuples"])


def test_the_plan_switches_at_the_threshold_computed_from_the_table(conn, space):
    name, index, alice = space
    vectors = conn.execute("select suparag_search.row_estimate(%s, %s) as n",
                           tuple(index.split("."))).fetchone()["n"]
    assert vectors == DOCS * PER_DOC  # the index's reltuples, as the function reads it
    # k = 500: threshold 3 * sqrt(500 * 4000) = 4,243 > alice's 3,500 chunks -> exact.
    # (The landed constant, 3,000, sent her to HNSW for every k.)
    assert plan(conn, 500, vectors, DOCS)["exact_scan_chunks"] == 4243
    rows, hnsw_scans, settings = run_as(conn, alice, index, 500, name)
    assert (rows, hnsw_scans) == (500, 0)
    # k = 10: threshold 3,000 <= 3,500 -> HNSW, and still k rows
    rows, hnsw_scans, settings = run_as(conn, alice, index, 10, name)
    assert rows == 10 and hnsw_scans >= 1
    # the plan's ef_search and max_scan_tuples were local to the call
    assert settings == ("41", "1234")



SPREAD_DOCS = 10_000
SAMPLE = 1000  # documents match_documents samples to choose its plan (sample_rows)


def reads_as(conn: psycopg.Connection[Any], claims: dict[str, Any] | None
             ) -> tuple[set[str], dict[str, int], str]:
    """The titles match_documents returns to claims (k = 50), the rows sequential scans
    read from documents and document_chunks during the call, and enable_seqscan after it;
    rolled back."""
    query = "[" + ",".join(["0.05"] * DIMS) + "]"
    scanned = ("select relname, seq_tup_read from pg_stat_xact_user_tables"
               " where schemaname = 'public' and relname in ('documents', 'document_chunks')")
    with conn.transaction(force_rollback=True):
        set_request_context(conn, claims)
        before = {r["relname"]: r["seq_tup_read"] for r in conn.execute(scanned)}
        rows = conn.execute("select title from public.match_documents(%s::extensions.vector,"
                            " 50)", (query,)).fetchall()
        after = {r["relname"]: r["seq_tup_read"] for r in conn.execute(scanned)}
        seqscan = conn.execute("select current_setting('enable_seqscan') as s").fetchone()["s"]
    return ({r["title"] for r in rows},
            {name: after[name] - before.get(name, 0) for name in after}, seqscan)


def test_a_narrow_reader_is_served_from_the_indexes_not_by_reading_every_document(conn):
    """A user who reads 20 documents spread among 10,000: the search reads their documents
    through the policy's indexes (migration 20261203010000), not by a sequential scan of
    the table (before it, each call read all 10,000 rows of documents three times), while a
    broad reader's count still scans and stops early. Results are still exactly what RLS
    allows, for the narrow user, anon and a broad reader."""
    narrow = add_user(conn, "narrow@example.com", team="n")
    wide = add_user(conn, "wide@example.com", team="w")
    others = [add_user(conn, f"u{k}@example.com", team=f"t{k}") for k in range(50)]
    rng = np.random.default_rng(3)
    expected: dict[str, set[str]] = {"narrow": set(), "anon": set(), "wide": set()}
    ids = [uuid.uuid4() for _ in range(SPREAD_DOCS)]
    with conn.cursor().copy("copy public.documents (id, owner_id, team, visibility, title,"
                            " content) from stdin") as copy:
        for i, doc_id in enumerate(ids):
            if i % 500 == 250:  # 20 of narrow's own, spread through the table
                owner, team, visibility = narrow.id, "n", "private"
                expected["narrow"].add(f"d{i}")
            elif i % 1000 == 7:  # 10 public ones
                owner, team, visibility = others[0].id, "t0", "public"
                for who in expected.values():
                    who.add(f"d{i}")
            elif i % 2:
                owner, team, visibility = wide.id, "w", "team"
                expected["wide"].add(f"d{i}")
            else:
                other = others[i % 50]
                owner, team, visibility = other.id, f"t{i % 50}", "team"
            copy.write_row((doc_id, owner, team, visibility, f"d{i}", "c"))
    # no HNSW index: the plan's floors apply (exact scan under 500 readable documents)
    conn.execute("drop index public.document_chunks_embedding_idx")
    with conn.cursor().copy("copy public.document_chunks (document_id, chunk_index, content,"
                            " embedding, embedding_model, content_hash) from stdin") as copy:
        for doc_id, v in zip(ids, clustered(rng, SPREAD_DOCS), strict=True):
            copy.write_row((doc_id, 0, "chunk",
                            "[" + ",".join(f"{x:.6f}" for x in v) + "]", "m", "h"))
    conn.execute("analyze")
    conn.commit()

    titles, scanned, seqscan = reads_as(conn, narrow.claims())
    assert titles == expected["narrow"]  # 20 own + 10 public: fewer than k, all of them
    # the sample that chooses the plan (about 1,000 rows) and nothing else: not 10,000
    assert scanned["documents"] < SAMPLE * 3 // 2, scanned
    assert scanned["document_chunks"] == 0, scanned
    assert seqscan == "on"  # turned off for the call only

    titles, scanned, _ = reads_as(conn, None)  # anon: the public documents only
    assert titles == expected["anon"]
    assert scanned["documents"] < SAMPLE * 3 // 2, scanned

    titles, _, _ = reads_as(conn, wide.claims())  # broad: 50 of its ~5,000, none hidden
    assert len(titles) == 50 and titles <= expected["wide"]

    # the choice, from a sample under each caller's RLS: indexes for the narrow reader and
    # anon; for the broad reader the scan, which finds 500 of its documents in about
    # 1,000 rows where the indexes would read an entry for each of its 5,000
    for claims, few in ((narrow.claims(), True), (None, True), (wide.claims(), False)):
        with conn.transaction(force_rollback=True):
            set_request_context(conn, claims)
            assert conn.execute("select suparag_search.few_readable_documents('{}', 500)"
                                " as few").fetchone()["few"] is few, claims
    # a filter counts too: the broad reader's documents with a tag nobody has are few
    with conn.transaction(force_rollback=True):
        set_request_context(conn, wide.claims())
        assert conn.execute("select suparag_search.few_readable_documents("
                            "'{\"tag\": \"none\"}', 500) as few").fetchone()["few"] is True


def hnsw_query_plan(conn: psycopg.Connection[Any], claims: dict[str, Any] | None,
                    query: str, k: int) -> tuple[list[str], str]:
    """The titles match_documents returns to claims, and the executed plan (auto_explain,
    nested statements) of its query that scans the HNSW index ('' when none did); rolled
    back. Also checks that the call left the caller's memory settings as they were."""
    plans: list[str] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        plans.append(notice.message_primary or "")

    conn.add_notice_handler(keep)
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("load 'auto_explain'")
            conn.execute("set local auto_explain.log_min_duration = 0;"
                          " set local auto_explain.log_nested_statements = on;"
                          " set local auto_explain.log_analyze = on;"
                          " set local client_min_messages = log;"
                          " set local work_mem = '3MB'; set local hash_mem_multiplier = 3")
            set_request_context(conn, claims)
            rows = conn.execute("select title from public.match_documents("
                                "%s::extensions.vector, %s)", (query, k)).fetchall()
            after = conn.execute("select current_setting('work_mem') as w,"
                                 " current_setting('hash_mem_multiplier') as h").fetchone()
            assert (after["w"], after["h"]) == ("3MB", "3")
    finally:
        conn.remove_notice_handler(keep)
    scans = [p for p in plans if "Index Scan using document_chunks_embedding_idx" in p]
    assert len(scans) <= 1, scans
    return [r["title"] for r in rows], scans[0] if scans else ""


def test_candidates_are_checked_by_key_not_by_hashing_every_readable_document(conn):
    """Beside the HNSW scan, the chunks' read policy (`exists` a readable document) is
    checked by one primary-key lookup per candidate (migration 20261204000000). Before it
    the planner hashed every document the caller may read on each call, because it counts
    the check once per row of the table, not per row the LIMIT lets through: here 8,000
    of 10,000 documents, at a million chunks 19 of the query's 25 ms. Results are what RLS
    allows for anon, a reader of the public documents and the reader of all of them."""
    writer = add_user(conn, "writer@example.com", team="w")
    keeper = add_user(conn, "keeper@example.com", team="k")
    reader = add_user(conn, "reader@example.com", team="r")
    ids = [uuid.uuid4() for _ in range(SPREAD_DOCS)]
    public = {f"d{i}" for i in range(SPREAD_DOCS) if i % 5}
    with conn.cursor().copy("copy public.documents (id, owner_id, team, visibility, title,"
                            " content) from stdin") as copy:
        for i, doc_id in enumerate(ids):
            if f"d{i}" in public:
                copy.write_row((doc_id, writer.id, "w", "public", f"d{i}", "c"))
            else:
                copy.write_row((doc_id, keeper.id, "k", "private", f"d{i}", "c"))
    rng = np.random.default_rng(7)
    vectors = clustered(rng, SPREAD_DOCS)
    with conn.cursor().copy("copy public.document_chunks (document_id, chunk_index, content,"
                            " embedding, embedding_model, content_hash) from stdin") as copy:
        for doc_id, v in zip(ids, vectors, strict=True):
            copy.write_row((doc_id, 0, "chunk",
                            "[" + ",".join(f"{x:.6f}" for x in v) + "]", "m", "h"))
    conn.execute("analyze")
    conn.commit()

    query = "[" + ",".join(f"{x:.6f}" for x in clustered(rng, 1)[0]) + "]"
    returned: dict[str, list[str]] = {}
    for who, claims, readable in (
            ("anon", None, public), ("reader", reader.claims(), public),
            ("keeper", keeper.claims(), {f"d{i}" for i in range(SPREAD_DOCS)})):
        titles, plan_text = hnsw_query_plan(conn, claims, query, 10)
        assert plan_text, "the HNSW branch ran"  # >= 3,000 readable chunks of 10,000
        assert "hashed SubPlan" not in plan_text, plan_text
        # a lookup by key per candidate (documents_pkey, or documents_public_idx for anon);
        # PostgreSQL 18 prints the subplan as EXISTS(SubPlan n), 15 as SubPlan n
        assert "SubPlan" in plan_text and "Index Cond: (id = c" in plan_text, plan_text
        assert len(titles) == 10 and set(titles) <= readable, (who, titles)
        returned[who] = titles
    # anon and the reader may read the same documents: the same rows, in the same order
    assert returned["anon"] == returned["reader"]
    # (recall against an exact scan is tests/test_full_results.py's and the bench's: here
    # the query is a random direction, whose nearest rows are near ties for HNSW)
