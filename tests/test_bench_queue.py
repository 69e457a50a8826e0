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


def test_small_queue_bench_embeds_every_document_once_at_each_n() -> None:
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
