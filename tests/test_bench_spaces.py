"""`suparag bench spaces` end to end at a tiny size: the JSON carries the figures, they add up.

No timing thresholds: a benchmark's figures are reported, never asserted. What
is asserted is what issue 10 requires regardless of speed: no search failed
or came back empty, the new space answered after `activate`, and the old one
never did again.
"""

from __future__ import annotations

from test_bench import bench_json


def test_bench_spaces_small(db_url):
    r = bench_json("spaces", "--chunks", "12", "--rate", "5", "--phase-seconds", "1",
                   "--db-url", db_url)
    assert r["bench"] == "spaces" and r["chunks"] >= 12
    assert r["active_after"] == "minilm-again"
    assert r["failed_searches"] == 0, r["phases"]
    for name in ("before", "during", "after", "switch"):
        phase = r["phases"][name]
        assert phase["searches"] > 0 and phase["failed"] == 0, (name, phase)
        assert 0 < phase["p50_ms"] <= phase["p95_ms"]
    assert r["backfill_s"] > 0 and r["bare_model_chunks_per_s"] > 0
    assert r["backfill_ratio"] == r["backfill_chunks_per_s"] / r["bare_model_chunks_per_s"]
    assert r["activate_to_first_new_answer_ms"] is not None
    assert 0 <= r["activate_to_first_new_answer_ms"] < r["phase_seconds"] * 1000
    assert r["old_answers_after_activate"] == 0
    assert set(r["machine_after"]) == {"cpus", "load"}


def test_bench_search_times_a_table_space_beside_the_column():
    r = bench_json("search", "--chunks", "200", "--queries", "3", "--table-space")
    assert [(c["caller"], c["space"]) for c in r["results"]] == [
        ("all rows (99%)", "column"), ("1% reader", "column"),
        ("all rows (99%)", "bench-table"), ("1% reader", "bench-table")]
    for caller in r["results"]:
        # the same vectors: exact results in both spaces, as many rows
        assert caller["recall_at_10"] == 1.0 and caller["mean_rows_returned"] == 10.0
        assert 0 < caller["match_p50_ms"] <= caller["match_p95_ms"]
