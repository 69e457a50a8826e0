"""A worker that runs next to a hosted project (issue 17): environment-only configuration,
JSON logs with one line per batch, health for orchestrators, SIGTERM within a deadline,
asynchronous commits for the embedding queue, and vectors read without the client's
typed parse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import wait_for

from bench.embedding_double import MODEL, DoubleState, Faults, serve
from cli.main import load_command
from worker.jobs.answering import AnswerWorker
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.service import Service
from worker.jobs.wakeups import WakeServer, Wakeups
from worker.models.openai import OpenAIEmbedder
from worker.users import add_user

#: Options that are not configuration: the database comes from SUPARAG_DB_URL through the
#: settings (resolve_db_url), and --json only shapes --once's summary for a script.
NOT_CONFIGURATION = {"db_url", "json_out"}


def worker_env(base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SUPARAG_EMBEDDING_PROVIDER="openai", SUPARAG_EMBEDDING_MODEL=MODEL,
               SUPARAG_OPENAI_API_KEY="sk-test", SUPARAG_OPENAI_BASE_URL=base_url)
    return env


def insert_docs(conn: Any, n: int) -> list[Any]:
    user = add_user(conn, "ops@example.com", team="ops")
    ids = [conn.execute("insert into public.documents (owner_id, title, content) values"
                        " (%s, %s, %s) returning id",
                        (user.id, f"Ops {i}", f"Runbook page {i}: restart the {i} service."))
           .fetchone()["id"] for i in range(n)]
    conn.commit()
    return ids


def test_every_worker_option_is_also_an_environment_variable() -> None:
    command = load_command("worker")
    missing = [p.name for p in command.params
               if p.name not in NOT_CONFIGURATION and not getattr(p, "envvar", None)]
    assert missing == []
    envvars = [p.envvar for p in command.params if getattr(p, "envvar", None)]
    assert all(str(e).startswith("SUPARAG_") for e in envvars)
    assert len(set(envvars)) == len(envvars)


def test_json_logs_one_line_per_batch_configured_by_environment(conn, db_url) -> None:
    ids = insert_docs(conn, 3)
    state = DoubleState(faults=Faults(), enabled=False, fixed=True)
    cpus = len(os.sched_getaffinity(0))  # as many lanes: pinned, unless told not to
    with serve(state) as base_url:
        env = worker_env(base_url)
        env.update(SUPARAG_DB_URL=db_url, SUPARAG_WORKER_ONCE="1", SUPARAG_LOG_FORMAT="json",
                   SUPARAG_WORKER_BATCH_SIZE="2", SUPARAG_WORKER_ONLY="embeddings",
                   SUPARAG_WORKER_LANES=str(cpus), SUPARAG_WORKER_PIN_LANES="0")
        done = subprocess.run([sys.executable, "-m", "cli", "worker"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    batches = [e for e in lines if e.get("event") == "batch"]
    assert [b["embedded"] for b in batches] == [2, 1]
    assert [e["message"] for e in lines if e["message"].startswith("model lanes")] == [
        f"model lanes: {cpus}, left to the scheduler"]
    assert all(b["claim_ms"] > 0 and b["batch_ms"] > 0 and b["queue"] == "embeddings"
               and b["level"] == "info" for b in batches)
    row = conn.execute("select count(*) as n from public.documents where id = any(%s)"
                       " and embedding_status = 'ready'", (ids,)).fetchone()
    assert row["n"] == 3


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.parametrize("reachable", [True, False])
def test_health_ready_needs_the_database(db_url, embedder, reachable) -> None:
    url = db_url if reachable else "postgresql://postgres@127.0.0.1:1/postgres"
    service = Service([EmbeddingWorker(url, embedder)])
    service._loaded = True  # as after run() loaded the model
    server = WakeServer(("127.0.0.1", 0), Wakeups([]), service.health)
    import threading
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ready, body = _get(f"{base}/health/ready")
        live, _ = _get(f"{base}/health/live")
    finally:
        server.shutdown()
        server.server_close()
    assert live == 200
    assert body["database"]["reachable"] is reachable
    assert ready == (200 if reachable else 503)
    assert body["seconds_since_last_batch"] is None


def test_sigterm_gives_up_on_a_stuck_batch_at_the_deadline(conn, db_url) -> None:
    insert_docs(conn, 1)
    # Every embedding request hangs for 60 s: the batch in hand cannot finish.
    state = DoubleState(faults=Faults(throttle=0, error=0, timeout=0, slow=1.0,
                                      slow_seconds=(60.0, 60.0)))
    with serve(state) as base_url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--only", "embeddings", "--db-url", db_url,
             "--shutdown-timeout", "1", "--log-format", "json"],
            env=worker_env(base_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: state.requests >= 1, 60), "the worker never asked the model"
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _, err = proc.communicate()
    assert proc.returncode == 1
    assert took < 10
    assert "shutdown-timeout" in err


def test_only_the_embedding_queue_commits_asynchronously(conn, db_url, embedder) -> None:
    # The test server runs without synchronous commits; this database gets the default back.
    name = conn.execute("select current_database() as name").fetchone()["name"]
    conn.execute(f'alter database "{name}" set synchronous_commit = on')
    conn.commit()
    embedding, answers = EmbeddingWorker(db_url, embedder), AnswerWorker(db_url, embedder)
    try:
        for worker, expected in ((embedding, "off"), (answers, "on")):
            row = worker.conn.execute("show synchronous_commit").fetchone()
            assert row is not None and row["synchronous_commit"] == expected
    finally:
        embedding.close()
        answers.close()


def test_vectors_are_read_without_the_clients_typed_parse(monkeypatch) -> None:
    # The client's construct_type walks every float of every vector (~1 s per 40 vectors);
    # the embedder reads the JSON itself.
    import openai._models

    calls = 0
    original = openai._models.construct_type

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(openai._models, "construct_type", counting)
    state = DoubleState(faults=Faults(), enabled=False)
    with serve(state) as base_url:
        embedder = OpenAIEmbedder(MODEL, api_key="sk-test", base_url=base_url)
        vectors = embedder.embed([f"text {i}" for i in range(8)])
    assert len(vectors) == 8 and all(len(v) == 384 for v in vectors)
    assert calls == 0
