"""`suparag bench chaos`: a short run holds every guarantee, and the checker catches breakage.

The short run (about 25 s of chaos, one database restart, kills every 5 s) is
the full bench at a smaller size: real worker processes, a real embedded
PostgreSQL restarted under them, the OpenAI-compatible double injecting
faults over real HTTP. The planted-violation tests embed a few documents
properly, check that the checker passes them, then break one rule at a time
and expect the checker to say so: otherwise its 0 would prove nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from bench import chaos
from bench.chaos_check import CheckResult, check, chunks_of
from bench.embedding_double import MODEL, DoubleState, Faults, serve
from worker.db import as_request, connect
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.models.openai import OpenAIEmbedder
from worker.users import add_user


def test_short_chaos_run_has_no_violations_and_real_faults() -> None:
    result = chaos.run(seconds=25, workers=2, restarts=1, kill_every=5, rate=8, seed=3,
                       drain_timeout=150)
    assert result["violations"] == [], result["violations"]
    assert result["pass"]
    # The faults, kills and restart really happened, and the checker really looked.
    assert result["kills"] >= 3
    assert result["restarts"] == ["fast"]
    faults = result["double"]["faults"]
    assert all(faults.get(kind, 0) > 0 for kind in ("429", "500", "timeout", "slow")), faults
    assert result["operations"]["insert"] > 20
    assert result["operations"]["edit_metadata"] > 5
    assert result["operations"]["delete"] > 0
    check_ = result["check"]
    assert check_["ready"] > 20 and check_["chunks_checked"] > check_["ready"]
    assert check_["deleted_checked"] > 0 and check_["frozen_texts_checked"] > 0


# -- the checker against planted violations ----------------------------------------------------

@pytest.fixture
def embedded(db_url: str) -> Iterator[tuple[str, OpenAIEmbedder, DoubleState, list[uuid.UUID]]]:
    """Six documents embedded by the real worker through the double (no faults)."""
    state = DoubleState(Faults(), enabled=False)
    with serve(state) as base_url, connect(db_url) as conn:
        embedder = OpenAIEmbedder(MODEL, api_key=chaos.API_KEY, base_url=base_url)
        user = add_user(conn, "planted@bench.local", team="bench")
        conn.commit()
        ids = [uuid.uuid4() for _ in range(6)]
        with as_request(conn, user.claims()):
            for n, doc_id in enumerate(ids):
                conn.execute(
                    "insert into public.documents (id, owner_id, title, content)"
                    " values (%s, %s, %s, %s)",
                    (doc_id, user.id, f"Note {n}", f"First part {n}.\n\n" + "word " * 900))
        worker = EmbeddingWorker(db_url, embedder, config=WorkerConfig(batch_size=4))
        try:
            worker.drain()
        finally:
            worker.close()
        yield db_url, embedder, state, ids


def _check(db_url: str, embedder: OpenAIEmbedder, **kwargs: Any) -> CheckResult:
    with connect(db_url, autocommit=True) as conn:
        return check(conn, embedder, model=embedder.name, max_attempts=5, **kwargs)


def _run_sql(db_url: str, query: str, params: tuple[Any, ...]) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(query, params)  # type: ignore[arg-type]


def test_checker_passes_a_correct_database(embedded: Any) -> None:
    db_url, embedder, _, _ = embedded
    result = _check(db_url, embedder)
    assert result.violations == []
    assert result.ready == 6 and result.chunks_checked >= 12  # long documents: 2+ chunks each


def test_checker_catches_a_corrupted_vector(embedded: Any) -> None:
    db_url, embedder, _, ids = embedded
    _run_sql(db_url, "update public.document_chunks set embedding = ("
             "select embedding from public.document_chunks where document_id = %s"
             " and chunk_index = 1) where document_id = %s and chunk_index = 0",
             (ids[1], ids[0]))
    (violation,) = _check(db_url, embedder).violations
    assert f"document {ids[0]} chunk 0: vector cosine" in violation


def test_checker_catches_a_missing_chunk_and_a_stale_text(embedded: Any) -> None:
    db_url, embedder, _, ids = embedded
    _run_sql(db_url, "delete from public.document_chunks where document_id = %s"
             " and chunk_index = 1", (ids[0],))
    _run_sql(db_url, "update public.document_chunks set content = 'old text'"
             " where document_id = %s and chunk_index = 0", (ids[1],))
    violations = _check(db_url, embedder).violations
    assert len(violations) == 2
    assert f"document {ids[0]} has chunks [0" in violations[0] + violations[1]
    assert any(f"document {ids[1]} chunk 0: its text is not" in v for v in violations)


def test_checker_catches_pending_leased_and_deleted_leftovers(embedded: Any) -> None:
    db_url, embedder, _, ids = embedded
    # A document left pending with a leased job, as a worker killed mid-batch would leave it
    # if leases never expired.
    _run_sql(db_url, "update public.documents set content = content || ' more' where id = %s",
             (ids[2],))
    _run_sql(db_url, "update suparag_private.embedding_jobs set leased_by = 'gone',"
             " leased_until = now() + interval '1 hour' where document_id = %s", (ids[2],))
    # A deleted document whose chunks survived (FK off for the plant: the rule, not the FK,
    # is under test).
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("set session_replication_role = replica")
        conn.execute("delete from public.documents where id = %s", (ids[3],))
    violations = _check(db_url, embedder, deleted=[ids[3]]).violations
    text = "\n".join(violations)
    assert f"document {ids[2]} is pending" in text
    assert f"job of document {ids[2]} left leased" in text
    assert f"deleted document {ids[3]} still has" in text


def test_checker_catches_embedding_calls_after_metadata_edits(embedded: Any) -> None:
    db_url, embedder, state, ids = embedded
    with connect(db_url, autocommit=True) as conn:
        (doc,) = conn.execute("select title, content from public.documents where id = %s",
                              (ids[4],)).fetchall()
    texts = [c.embed_text for c in chunks_of(embedder, doc["title"], doc["content"])]
    frozen = {t: state.calls(t) for t in texts}
    assert all(n == 1 for n in frozen.values())
    assert _check(db_url, embedder, frozen=frozen, calls=state.calls).violations == []
    embedder.embed(texts[:1])  # a call the metadata edit should never have caused
    (violation,) = _check(db_url, embedder, frozen=frozen, calls=state.calls).violations
    assert "a metadata-only edit caused 1 embedding calls" in violation
