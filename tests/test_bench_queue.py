"""`suparag bench queue`, small: 1 and 2 worker processes, a few dozen documents.

Asserts the report's shape and the check (every document written exactly once,
no text sent twice); the figures themselves are the bench's, not the suite's.
"""

from __future__ import annotations

from bench import queue as bench_queue


def test_worker_counts_double_up_to_the_top() -> None:
    assert bench_queue.worker_counts(1) == [1]
    assert bench_queue.worker_counts(8) == [1, 2, 4, 8]
    assert bench_queue.worker_counts(6) == [1, 2, 4, 6]


def test_small_queue_bench_embeds_every_document_once_at_each_n(tmp_path) -> None:
    result = bench_queue.run(workers=2, docs=40, batch_size=4)
    assert result["violations"] == []
    assert [r["workers"] for r in result["rounds"]] == [1, 2]
    for r in result["rounds"]:
        assert r["docs"] == 40 and r["chunks"] >= 40
        assert r["docs_per_s"] > 0 and r["chunks_per_s"] >= r["docs_per_s"]
        # Every batch logged its claim (JSON logs): 40 documents in batches of 4.
        assert r["batches"] >= 10
        assert 0 < r["claim_ms"]["p50"] <= r["claim_ms"]["p95"] <= r["claim_ms"]["max"]
        assert r["claim_server_ms"]["calls"] >= 10
        assert r["db_cpu_share"] > 0 and r["samples"] > 0
        assert r["top_statements"]
    assert result["scaling"]["1"] == 1.0
    bench_queue.plot(result, tmp_path / "queue.png")
    assert (tmp_path / "queue.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_check_catches_a_document_written_twice_and_a_text_sent_twice(conn) -> None:
    from collections import Counter

    from bench.embedding_double import DoubleState, Faults
    from worker.users import add_user

    conn.execute(bench_queue.WRITE_COUNTER)
    user = add_user(conn, "check@example.com", team="c")
    doc = conn.execute("insert into public.documents (owner_id, title, content) values"
                       " (%s, 'T', 'one chunk') returning id", (user.id,)).fetchone()["id"]
    for _ in range(2):  # two write-backs of one document
        conn.execute("update public.documents set embedding_status = 'ready' where id = %s",
                     (doc,))
    conn.execute("delete from suparag_private.embedding_jobs")
    state = DoubleState(faults=Faults(), enabled=False)
    state.calls_per_text.update(["T one chunk", "T one chunk"])
    violations = bench_queue._check(conn, [doc], state, Counter(), failed=0)
    assert any("exactly once" in v for v in violations)
    assert any("more than once" in v for v in violations)
    assert any("chunks stored" in v for v in violations)
