"""`suparag dev` starts the workers too, like `supabase start`: the real binary, a real
database, the packaged model; and the API process serves `/functions/v1`."""

from __future__ import annotations

import json
import os
import time

import httpx
import psutil
import pytest
from conftest import free_port
from test_cli import Cli

from worker.db import connect
from worker.devstack.processes import LocalWorkers
from worker.users import add_user

WAIT = 120.0  # the worker loads the model on 2 cores before it drains


@pytest.fixture
def dev_cli(tmp_path):
    """The real `suparag` binary with its own home, DB port and API port."""
    work = tmp_path / "project"
    work.mkdir()
    runner = Cli(home=tmp_path / "home", port=free_port(), cwd=work)
    env = {"SUPARAG_API_PORT": str(free_port())}
    yield runner, env
    runner("dev", "stop", check=False, env=env)


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_dev_runs_the_workers_until_dev_stop(dev_cli):
    cli, env = dev_cli
    started = json.loads(cli("dev", "--json", env=env).stdout)
    pid = started["worker_pid"]
    assert started["worker_reused"] is False and started["worker_log"].endswith("worker.log")
    status = json.loads(cli("dev", "status", "--json", env=env).stdout)
    assert status["worker_running"] and status["worker_pid"] == pid
    # `dev` returned once the worker was ready: its model loaded, LISTEN in place.
    health = status["worker_health"]
    assert health["ready"] and health["listening"]
    assert health["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert httpx.get(started["worker_health_url"], timeout=5).json()["worker_id"] == \
        health["worker_id"]
    assert "model sentence-transformers/all-MiniLM-L6-v2, ready" in \
        cli("dev", "status", env=env).stdout

    # A document committed with plain SQL is embedded with nothing else run.
    with connect(started["db_url"]) as conn:
        owner = add_user(conn, "ann@example.com", team="red")
        doc = conn.execute(
            "insert into public.documents (owner_id, team, visibility, title, content)"
            " values (%s, 'red', 'team', 'runbook', 'restart the database, then page ann')"
            " returning id", (owner.id,)).fetchone()
        conn.commit()
        assert doc is not None
        deadline = time.monotonic() + WAIT
        while True:
            row = conn.execute("select embedding_status, embedding_model from public.documents"
                               " where id = %s", (doc["id"],)).fetchone()
            conn.commit()
            assert row is not None
            if row["embedding_status"] == "ready":
                break
            assert time.monotonic() < deadline, (cli.home / "logs" / "worker.log").read_text()
            time.sleep(0.2)
        chunks = conn.execute("select count(*) as n from public.document_chunks"
                              " where document_id = %s", (doc["id"],)).fetchone()
        assert chunks is not None and chunks["n"] >= 1

    # The API process serves /functions/v1 with the same model.
    embedded = httpx.post(f"{started['api_url']}/functions/v1/embed",
                          json={"input": "who restarts the database?"},
                          headers={"apikey": started["anon_key"]}, timeout=60)
    assert embedded.status_code == 200, embedded.text
    assert embedded.json()["model"] == row["embedding_model"]
    assert len(embedded.json()["embedding"]) == 384
    # The wake endpoint needs the local Vault's secret, which `dev` made and gave the worker.
    with connect(started["db_url"]) as conn:
        secret = conn.execute("select decrypted_secret as s from vault.decrypted_secrets"
                              " where name = 'suparag_wake_secret'").fetchone()
    assert secret is not None and len(secret["s"]) >= 32
    for url in (f"{started['api_url']}/functions/v1/wake", started["worker_health_url"]):
        assert httpx.post(url, timeout=10).status_code == 401
        assert httpx.post(url, timeout=10, headers={"X-Suparag-Wake-Secret": secret["s"]}
                          ).status_code in (200, 202)

    again = json.loads(cli("dev", "--json", env=env).stdout)
    assert again["worker_reused"] is True and again["worker_pid"] == pid

    stopped = cli("dev", "stop", env=env).stdout
    assert "Stopped the workers" in stopped
    assert gone(pid)
    status = json.loads(cli("dev", "status", "--json", env=env, check=False).stdout)
    assert status["worker_running"] is False and "worker_pid" not in status


def test_a_worker_that_cannot_load_its_model_fails_dev_with_its_reason(dev_cli, tmp_path):
    cli, env = dev_cli
    missing = tmp_path / "no-such-model"
    result = cli("dev", env={**env, "SUPARAG_EMBEDDING_MODEL": str(missing)}, check=False)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())  # as printed, wrapped to the terminal
    assert "the worker exited at start" in message
    assert "cannot load embedding model" in message and "no-such-model" in message
    assert "worker.log" in message
    assert json.loads(cli("dev", "status", "--json", env=env).stdout)["worker_running"] is False


def test_no_workers_starts_none(dev_cli):
    cli, env = dev_cli
    started = json.loads(cli("dev", "--no-workers", "--json", env=env).stdout)
    assert "worker_pid" not in started
    status = json.loads(cli("dev", "status", "--json", env=env).stdout)
    assert status["worker_running"] is False
    assert "Stopped the workers" not in cli("dev", "stop", env=env).stdout


def test_a_stale_pidfile_is_not_a_running_worker(tmp_path):
    workers = LocalWorkers(tmp_path)
    assert workers.status() is None
    # This test's own process has the pid but is not a worker: never signalled.
    workers.pidfile.write_text(json.dumps({"pid": os.getpid(), "db_url": "postgresql://x"}))
    assert workers.status() is None
    assert workers.stop() is False
    assert not workers.pidfile.exists()
