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

