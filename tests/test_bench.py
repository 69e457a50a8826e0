"""`suparag bench ...` end to end at tiny sizes: the JSON carries the figures, and they add up.

No timing thresholds: a benchmark's figures are reported, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from worker.db import connect

SUPARAG = str(Path(sys.executable).parent / "suparag")


def bench(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPARAG_")}
    env["COLUMNS"] = "200"  # one error line, unwrapped
    result = subprocess.run([SUPARAG, "bench", *args], env=env, text=True,
                            capture_output=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def bench_json(*args: str) -> dict[str, Any]:
    data = json.loads(bench(*args, "--json").stdout)  # stdout is JSON only: progress is on stderr
    assert isinstance(data, dict)
    return data


def assert_summary(figures: dict[str, float]) -> None:
    assert set(figures) >= {"p50", "p95", "max", "mean"}
    assert 0 < figures["p50"] <= figures["p95"] <= figures["max"]


def leftovers(db_url: str) -> dict[str, int]:
    with connect(db_url) as conn:
        row = conn.execute(
            "select (select count(*) from auth.users where email like '%%@bench.local') as users,"
            " (select count(*) from public.documents) as docs,"
            " (select count(*) from public.document_chunks) as chunks,"
            " (select count(*) from suparag_private.embedding_jobs) as jobs").fetchone()
    assert row is not None
    return dict(row)


def test_bench_worker(db_url):
    """The real `suparag worker` embeds the same chunks the bare model did; figures add up."""
    r = bench_json("worker", "--docs", "3", "--batch-size", "2", "--token-budget", "256",
                   "--db-url", db_url)
    assert r["bench"] == "worker" and r["docs"] == 3 and r["batch_size"] == 2
    assert r["token_budget"] == 256
    assert r["warm_up_docs"] == 3  # as many as measured, by default
    assert "suparag worker --batch-size 2" in r["worker"] and "own process" in r["worker"]
    per = r["chunks_per_doc"]
    assert 1 <= per["min"] <= per["mean"] <= per["max"] and r["chunks"] == per["mean"] * 3
    assert r["model_seconds"] > 0 and r["end_to_end_seconds"] > 0
    # Model calls of one chunk or so (256 tokens): some timed before the end-to-end run,
    # some after.
    assert r["model_chunks_per_s_even_before"] > 0 and r["model_chunks_per_s_odd_after"] > 0
    assert r["model_chunks_per_s"] == pytest.approx(r["chunks"] / r["model_seconds"])
    assert r["end_to_end_chunks_per_s"] == pytest.approx(r["chunks"] / r["end_to_end_seconds"])
    assert r["ratio"] == pytest.approx(r["end_to_end_chunks_per_s"] / r["model_chunks_per_s"])
    assert r["goal_ratio"] == 0.95 and r["pass"] == (r["ratio"] >= 0.95)
    assert r["torch_threads"] >= 1 and r["machine_after"]["cpus"] >= 1
    assert r["torch_model_chunks_per_s"] is None and r["model_file"] is None
    # The worker runs a lane per torch thread; the bare model is timed both ways and the
    # faster is the rate the goal is judged by.
    assert r["lanes"] == r["torch_threads"]
    one_call = r["model_one_call_chunks_per_s"]
    assert r["ratio_to_one_call"] == pytest.approx(r["end_to_end_chunks_per_s"] / one_call)
    if r["lanes"] > 1:
        in_lanes = r["model_lanes_chunks_per_s"]
        assert in_lanes > 0 and r["model_in_lanes"] == (in_lanes > one_call)
        assert r["model_chunks_per_s"] == pytest.approx(max(in_lanes, one_call))
    else:
        assert r["model_lanes_chunks_per_s"] is None and not r["model_in_lanes"]
        assert r["model_chunks_per_s"] == pytest.approx(one_call)
    # Where the cores went: the worker process embedded (it used CPU), the bare model's
    # calls were timed in CPU too; none of it exceeds what the cores had in the run. The
    # server's few chunk writes can round to 0 in clock ticks of 10 ms (it did, once in
    # four runs); test_server_cpu_counts_only_what_the_server_used_between_its_samples
    # checks the server's count itself.
    c = r["cpu_seconds"]
    assert c["worker"] > 0 and c["database"] >= 0 and c["bare_model"] > 0
    assert c["wall_seconds"] == pytest.approx(r["end_to_end_seconds"], abs=0.5)
    capacity = c["cores"] * c["wall_seconds"]
    assert c["worker"] + c["database"] + c["bench"] <= c["busy"] + 0.5 <= capacity + 1
    assert r["ceiling_with_database"] == pytest.approx(
        c["bare_model"] / (c["bare_model"] + c["database"]))
    # A given database is left as it was: the bench users, documents and chunks are gone,
    # and so is the trigger that told the bench of each write-back.
    assert leftovers(db_url) == {"users": 0, "docs": 0, "chunks": 0, "jobs": 0}
    assert signal_left(db_url) == 0


def signal_left(db_url: str) -> int:
    """StatusSignal's schema and trigger still in the database."""
    with connect(db_url) as conn:
        row = conn.execute(
            "select (select count(*) from pg_namespace where nspname = 'bench_status')"
            " + (select count(*) from pg_trigger where tgname = 'bench_status_signal') as n"
        ).fetchone()
    assert row is not None
    return int(row["n"])


def test_status_signal_wakes_a_bench_when_a_status_changes_and_only_then(conn, world, db_url):
    """A write-back's one statement wakes the waiting bench at once; with no change, the
    wait runs out; on exit the trigger is gone."""
    import threading
    import time

    from bench._common import StatusSignal

    doc = world.docs["alice_private"]
    with StatusSignal(db_url) as signal, connect(db_url, autocommit=True) as app:
        assert signal.wait(0.2) is False  # nothing changed
        # An update that leaves embedding_status alone is not a change of status.
        app.execute("update public.documents set title = title || '!' where id = %s", (doc,))
        assert signal.wait(0.2) is False

        def write_back() -> None:
            time.sleep(0.3)
            with connect(db_url, autocommit=True) as other:
                other.execute("update public.documents set embedding_status = 'ready'"
                              " where owner_id = (select owner_id from public.documents"
                              " where id = %s)", (doc,))

        writer = threading.Thread(target=write_back)
        started = time.monotonic()
        writer.start()
        assert signal.wait(10.0) is True
        assert time.monotonic() - started < 5.0  # woken by the change, not the timeout
        writer.join()
        assert signal.wait(0.2) is False  # one statement, one wake-up, all of it read
    assert signal_left(db_url) == 0


def test_bench_worker_repeated_judges_the_goal_by_the_median(db_url):
    r = bench_json("worker", "--docs", "2", "--token-budget", "256", "--repeat", "3",
                   "--db-url", db_url)
    assert r["repeat"] == 3 and len(r["runs"]) == 3
    assert r["ratios"] == [run["ratio"] for run in r["runs"]]
    assert all(run["docs"] == 2 and run["ratio"] > 0 for run in r["runs"])
    assert r["ratio_median"] == sorted(r["ratios"])[1]
    assert r["ratio_min"] == min(r["ratios"]) and r["ratio_max"] == max(r["ratios"])
    assert r["pass"] == (r["ratio_median"] >= r["goal_ratio"] == 0.95)
    assert leftovers(db_url) == {"users": 0, "docs": 0, "chunks": 0, "jobs": 0}


def test_bench_worker_times_int8_beside_fp32_torch(db_url):
    r = bench_json("worker", "--docs", "2", "--backend", "onnx-int8", "--token-budget", "256",
                   "--db-url", db_url)
    assert r["backend"] == "onnx-int8" and r["model"].endswith("@onnx-int8")
    assert r["lanes"] == 1 and r["model_lanes_chunks_per_s"] is None  # ONNX: one call at a time
    assert r["model_file"].endswith(".onnx")
    torch_seconds = r["chunks"] / r["torch_model_chunks_per_s"]
    assert r["model_over_torch"] == pytest.approx(torch_seconds / r["model_seconds"])
    assert r["end_to_end_over_torch_model"] == pytest.approx(
        torch_seconds / r["end_to_end_seconds"])
    assert leftovers(db_url) == {"users": 0, "docs": 0, "chunks": 0, "jobs": 0}


def test_bench_freshness(db_url):
    r = bench_json("freshness", "--n", "3", "--rate", "4", "--max-paragraphs", "1",
                   "--in-process", "--db-url", db_url)
    assert r["bench"] == "freshness" and r["n"] == 3 and r["rate_per_s"] == 4
    assert "thread of this process" in r["worker"]
    assert r["chunks_per_doc"]["max"] == 1  # one short paragraph is one chunk
    for key in ("commit_to_ready_ms", "db_created_to_embedded_ms", "model_alone_ms"):
        assert_summary(r[key])
    assert set(r["pipeline_ms"]) == {"p50", "p95", "max", "mean"}
    assert r["goal_p95_ms"] == 100 and r["pass"] == (r["commit_to_ready_ms"]["p95"] <= 100)
    assert leftovers(db_url) == {"users": 0, "docs": 0, "chunks": 0, "jobs": 0}


def test_bench_freshness_during_a_backlog(db_url):
    """Edits committed while a bulk backlog (one multi-row statement) is being embedded."""
    r = bench_json("freshness", "--n", "2", "--rate", "4", "--max-paragraphs", "1",
                   "--backlog", "30", "--in-process", "--db-url", db_url)
    assert r["backlog"] == 30 and 0 <= r["backlog_pending_after_last_edit"] <= 30
    assert_summary(r["commit_to_ready_ms"])
    assert r["goal_p95_ms"] == 1000
    assert r["pass"] == (r["commit_to_ready_ms"]["p95"] <= 1000
                         and r["backlog_pending_after_last_edit"] > 0)
    assert leftovers(db_url) == {"users": 0, "docs": 0, "chunks": 0, "jobs": 0}


def test_bench_token_budget():
    """The sweep behind the default budget: every budget, calls that shrink as it grows,
    timed one call at a time and in the worker's lanes (one per core here)."""
    from bench import token_budget
    from worker.models.lanes import torch_threads

    r = token_budget.run(docs=3, budgets=(256, 4096))
    assert [row["budget"] for row in r["results"]] == [256, 4096]
    small, large = r["results"]
    assert small["calls"] >= r["chunks"] / 2 and large["calls"] < small["calls"]
    assert all(row["chunks_per_s"] > 0 for row in r["results"])
    assert r["lanes"] == torch_threads() == os.cpu_count() > 1
    assert all(row["lanes_chunks_per_s"] > 0 for row in r["results"])


def test_bench_search_sizes_shared_buffers_to_hold_the_index_and_chunks():
    from bench.search import buffer_memory_mb
    assert buffer_memory_mb(100_000) == 1024
    # a million chunks: 3,906 MB of index and rows and the rest, 4,883 MB, rounded up to
    # 256 MB steps; the machine caps at a quarter of its memory
    quarter = 256 * (psutil.virtual_memory().total / 4 / 2**20 // 256)
    assert buffer_memory_mb(1_000_000) == min(5120, quarter)


def test_bench_search_on_its_own_server():
    """Without --db-url the bench starts (and removes) a temporary server."""
    r = bench_json("search", "--chunks", "200", "--queries", "4", "--clients", "2")
    assert r["chunks"] == 200 and r["k"] == 10 and r["queries"] == 4 and r["index_build_s"] > 0
    # The build memory is stated: sized from --chunks (1 GB at least), and it held the graph.
    assert r["build"]["maintenance_work_mem"] == "1GB" and r["build"]["graph_fit_in_memory"]
    assert r["build"]["shared_buffers"] == "1GB"  # the floor; a million chunks get 5 GB
    assert r["build"]["index_mb"] > 0
    # Throughput: 2 connections at once, 2 calls each, per caller.
    assert [c["caller"] for c in r["concurrent"]] == ["all rows (99%)", "1% reader"]
    for c in r["concurrent"]:
        assert c["clients"] == 2 and c["queries"] == 4 and c["qps"] > 0
        assert 0 < c["p50_ms"] <= c["p95_ms"]
    assert [c["caller"] for c in r["results"]] == ["all rows (99%)", "1% reader"]
    for caller in r["results"]:
        # Both readers are small enough for match_documents' exact branch: full, exact results.
        assert caller["recall_at_10"] == 1.0 and caller["mean_rows_returned"] == 10.0
        assert 0 < caller["match_p50_ms"] <= caller["match_p95_ms"]
        assert 0 < caller["hybrid_p50_ms"] <= caller["hybrid_p95_ms"]


def test_bench_refuses_a_busy_queue(conn, world, db_url):
    """Queued jobs would be embedded too and skew the figures: a one-line error, exit 1."""
    result = bench("worker", "--docs", "2", "--db-url", db_url, check=False)
    assert result.returncode == 1
    assert "queued embedding jobs" in result.stderr and "suparag worker --once" in result.stderr
    assert result.stdout == ""


def test_bench_answers(db_url):
    """An app on supabase-py asks over /rest/v1; every answer's `done` event is timed."""
    r = bench_json("answers", "--n", "3", "--rate", "5", "--docs", "4", "--backlog", "2",
                   "--db-url", db_url)
    assert r["bench"] == "answers" and r["n"] == 3 and r["documents"] == 4
    assert r["backlog"] == 2 and 0 <= r["backlog_pending_at_last_answer"] <= 2
    assert r["modes"] == ["extractive"]
    assert len(r["questions"]) == 3 and len({q["id"] for q in r["questions"]}) == 3
    for q in r["questions"]:
        assert q["client_ms"] > 0 and q["db_created_to_done_ms"] > 0
    assert_summary(r["insert_to_done_event_ms"])
    assert_summary(r["db_created_to_done_ms"])
    assert leftovers(db_url) == {"users": 0, "docs": 0, "chunks": 0, "jobs": 0}


def test_bench_answers_delivery(db_url):
    """Both delivery paths with a few subscribers: every answer arrives on each, and the
    Realtime server's authorization work per message is none for broadcast."""
    r = bench_json("answers", "--delivery", "both", "--subscribers", "2", "--rate", "5",
                   "--db-url", db_url)
    assert r["bench"] == "answers-delivery" and r["subscribers"] == 2
    assert all(p["answers_missing"] == 0 for p in r["paths"].values())
    broadcast, changes = r["paths"]["broadcast"], r["paths"]["changes"]
    for path in (broadcast, changes):
        assert_summary(path["insert_to_done_ms"])
        assert path["insert_to_first_text_ms"]["p50"] <= path["insert_to_done_ms"]["p50"]
    # Deltas and done for each of the two askers; no statement per message.
    assert broadcast["messages_delivered"] >= 2 * 2
    assert broadcast["authorization_queries"] == 0
    # postgres_changes checks every change against every subscriber of the table.
    assert changes["authorization_queries_per_message"] >= 2
    assert leftovers(db_url) == {"users": 0, "docs": 0, "chunks": 0, "jobs": 0}


def test_bench_search_compares_another_function_on_the_same_build(tmp_path):
    """--compare-sql runs the file and measures again: same callers, a second set of figures.
    The file here makes match_documents return nothing, so the second pass must show it."""
    empty = tmp_path / "empty.sql"
    empty.write_text("  \n")
    result = bench("search", "--chunks", "200", "--compare-sql", str(empty), check=False)
    assert result.returncode == 1 and "is empty" in result.stderr and result.stdout == ""
    broken = tmp_path / "none.sql"
    broken.write_text("create or replace function public.match_documents("
                      "query_embedding extensions.vector, match_count integer default null,"
                      " filter jsonb default '{}'::jsonb, match_threshold double precision"
                      " default null, embedding_model text default null, include_embedding"
                      " boolean default null, space text default null)"
                      " returns table (document_id uuid, chunk_id bigint, chunk_index integer,"
                      " title text, content text, metadata jsonb, similarity double precision,"
                      " id bigint, embedding extensions.vector)"
                      " language sql stable as $$ select null::uuid, null::bigint, null::int,"
                      " null, null, null::jsonb, null::float8, null::bigint,"
                      " null::extensions.vector where false $$;")
    r = bench_json("search", "--chunks", "200", "--queries", "2", "--clients", "1",
                   "--compare-sql", str(broken))
    assert [c["mean_rows_returned"] for c in r["results"]] == [10.0, 10.0]
    assert r["compared"]["sql"] == str(broken)
    assert [c["caller"] for c in r["compared"]["results"]] == ["all rows (99%)", "1% reader"]
    assert [c["mean_rows_returned"] for c in r["compared"]["results"]] == [0.0, 0.0]


def test_the_shipped_ef_construction_rebuild_runs_as_a_comparison():
    """bench/sql/hnsw_ef_construction_128.sql (the README's denser-graph recipe) rebuilds the
    index under its own name: the second pass still finds k rows for both callers and the
    rebuild's time is reported."""
    sql = Path(__file__).resolve().parents[1] / "bench" / "sql" / "hnsw_ef_construction_128.sql"
    r = bench_json("search", "--chunks", "200", "--queries", "2", "--clients", "1",
                   "--compare-sql", str(sql))
    assert r["compared"]["sql_seconds"] > 0
    assert [c["mean_rows_returned"] for c in r["compared"]["results"]] == [10.0, 10.0]
    assert [c["recall_at_10"] for c in r["compared"]["results"]] == [1.0, 1.0]


def test_server_cpu_counts_only_what_the_server_used_between_its_samples(db_url):
    """A backend that burned CPU before the first sample adds nothing to the seconds."""
    from bench._common import ServerCpu, local_postmaster
    with connect(db_url, autocommit=True) as busy, connect(db_url, autocommit=True) as conn:
        busy.execute("select count(*) from generate_series(1, 6000000)").fetchone()
        postmaster = local_postmaster(conn)
        assert postmaster is not None
        meter = ServerCpu(postmaster)
        meter.sample()
        meter.sample()
        assert meter.seconds() < 0.2
        busy.execute("select count(*) from generate_series(1, 6000000)").fetchone()
        meter.sample()
        assert meter.seconds() > 0.1  # now it did, between two samples


def test_bench_index_write_separates_the_hnsw_index_from_the_rest_of_a_write(
        db_url, embedder):
    """The database's part of a write-back, by index: each variant's copy of document_chunks
    has the indexes it names, every row is written, and the copies are gone afterwards."""
    from bench import index_write

    with connect(db_url, autocommit=True) as conn:
        def indexed(variant: str) -> set[str]:
            table = index_write._table(conn, variant, 9)
            defs = [r["indexdef"] for r in conn.execute(
                "select indexdef from pg_indexes where tablename = %s", (table,))]
            conn.execute(f"drop table public.{table}")
            return {kind for kind in ("hnsw", "gin") if any(f"USING {kind}" in d for d in defs)}

        assert indexed("hnsw+gin") == {"hnsw", "gin"}
        assert indexed("gin") == {"gin"} and indexed("keys") == set()

    r = index_write.run(docs=3, db_url=db_url, embedder=embedder)
    assert r["chunks"] >= 3 and r["prior_chunks"] >= 3
    assert set(r["variants"]) == {"hnsw+gin", "gin", "keys"}
    for v in r["variants"].values():
        assert v["cpu_seconds"] >= 0 and v["wall_seconds"] > 0
    assert r["hnsw_cpu_seconds"] == pytest.approx(
        r["variants"]["hnsw+gin"]["cpu_seconds"] - r["variants"]["gin"]["cpu_seconds"])
    with connect(db_url) as conn:
        left = conn.execute("select count(*) as n from pg_tables where tablename like"
                            " 'bench_chunks_%'").fetchone()
        assert left is not None and left["n"] == 0
