"""`suparag search` with the local stack running embeds the query on the API and loads no
model library (issue 16), and `suparag bench cli` reports the CLI's start-up figures.

The import check reads the child's own `python -X importtime` log; a control run
with the API stopped shows the same check seeing torch when the CLI falls back
to loading the model itself.
"""

from __future__ import annotations

import json

from test_bench import bench_json

from bench.cli_speed import load_corpus, model_modules, run_cli, running_stack
from worker.devstack import stack


def test_search_with_the_stack_running_imports_no_model_library():
    with running_stack() as running:
        running.warm_up()
        user = load_corpus(running.db_url, 40)
        args = ["search", "restore last night's backup", "--as", user.email, "-k", "3", "--json"]
        fast, _, _ = run_cli(args, running.env, python_flags=("-X", "importtime"))
        assert model_modules(fast.stderr) == []
        hits = json.loads(fast.stdout)
        assert len(hits) == 3 and all(h["title"].startswith("Runbook ") for h in hits)

        assert stack.local_api(running.settings).stop()
        slow, _, _ = run_cli(args, running.env, python_flags=("-X", "importtime"), timeout=600)
        loaded = model_modules(slow.stderr)
        assert "torch" in loaded and "sentence_transformers" in loaded
        # The same model, here or on the API: the same query vector, the same hits.
        assert [h["document_id"] for h in json.loads(slow.stdout)] == \
            [h["document_id"] for h in hits]


def test_bench_cli_reports_wall_cpu_and_goal_ratios():
    r = bench_json("cli", "--runs", "2", "--docs", "20")
    assert r["bench"] == "cli" and r["runs"] == 2 and r["documents"] == 20
    assert r["search_imported_model_modules"] == []
    for name, goal in (("help", 0.5), ("search", 1.0)):
        figures = r[name]
        assert figures["goal_s"] == goal
        wall = figures["wall_s"]
        assert 0 < wall["p50"] <= wall["p95"] <= wall["max"]
        assert 0 < figures["cpu_s"]["p50"] <= figures["cpu_s"]["max"]
        assert figures["ratio_p50"] == round(wall["p50"] / goal, 3)
        assert figures["ratio_p95"] == round(wall["p95"] / goal, 3)
    assert set(r["machine_before"]) == {"cpus", "load"}
