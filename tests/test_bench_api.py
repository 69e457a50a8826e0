"""`suparag bench api`, small: a few clients for a few seconds against the real local API.

Asserts the report's shape and that no call got a 5xx; the figures themselves
are the bench's, not the suite's.
"""

from __future__ import annotations

from bench import api as bench_api


def test_small_api_bench_reports_every_call_type_without_5xx() -> None:
    result = bench_api.run(clients=4, seconds=4, slow=1, docs=40)
    for phase in ("quiet", "with_slow"):
        report = result[phase]
        assert report["5xx"] == 0 and report["503"] == 0, report["errors"]
        assert report["throughput_per_s"] > 0
        for call in bench_api.CALLS:
            figures = report["calls"][call]
            assert figures["n"] > 0, (phase, call, report["errors"])
            assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert result["with_slow"]["slow_calls"] >= 0
    assert set(result["p95_ratio"]) == set(bench_api.CALLS)
