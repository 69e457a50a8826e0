"""`suparag bench search-api` runs end to end on a tiny corpus (figures are not asserted,
only that both phases ran and the warm one was served from the query-vector cache)."""

from __future__ import annotations

from bench import search_api


def test_search_api_bench_runs_cold_then_warm(db_url):
    result = search_api.run(clients=2, requests=3, docs=30, db_url=db_url)
    for phase in ("cold", "warm"):
        assert result[phase]["n"] == 6 and result[phase]["errors"] == 0
        assert result[phase]["p95_ms"] >= result[phase]["p50_ms"] > 0
    assert result["cold"]["model_share"] > 0
    assert result["warm"]["model_share"] < 0.05  # every query text was cached
    assert set(result["machine_after"]) == {"cpus", "load"}
