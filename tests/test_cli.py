"""The `suparag` command as a user runs it: a real process, its own home and port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, port_taken

from worker.devstack.postgres import _bin
from worker.schema import edge_functions_dir, migrations_dir

SUPARAG = str(Path(sys.executable).parent / "suparag")
MIGRATIONS = len(list(migrations_dir().glob("*.sql")))


class Cli:
    def __init__(self, home: Path, port: int, cwd: Path) -> None:
        self.home, self.port, self.cwd = home, port, cwd

    def __call__(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SUPARAG_")}
        full_env.update(SUPARAG_HOME=str(self.home), SUPARAG_DB_PORT=str(self.port),
                        COLUMNS="200", **(env or {}))
        result = subprocess.run([SUPARAG, *args], cwd=self.cwd, env=full_env, text=True,
                                capture_output=True, timeout=120, input=input)
        assert "Traceback" not in result.stderr, result.stderr
        if check:
            assert result.returncode == 0, result.stderr + result.stdout
        return result

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


class DbCli(Cli):
    """The real `suparag` binary pointed at one test database through SUPARAG_DB_URL."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        super().__init__(home=tmp_path / "home", port=free_port(), cwd=tmp_path)
        self.db_url = db_url

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return super().__call__(*args, env={"SUPARAG_DB_URL": self.db_url, **(env or {})},
                                **kwargs)


@pytest.fixture
def cli(tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    runner = Cli(home=tmp_path / "home", port=free_port(), cwd=work)
    yield runner
    runner("dev", "stop", check=False)


def test_dev_lifecycle(cli):
    started = cli.json("dev")
    assert started["reused"] is False
    assert started["db_url"] == (f"postgresql://postgres:postgres@127.0.0.1:{cli.port}/postgres"
                                 "?sslmode=disable")
    assert len(started["applied"]) == MIGRATIONS

    # psql at that URL shows the schema
    tables = subprocess.run([_bin("psql"), started["db_url"], "-Atc", r"\dt public.*"],
                            capture_output=True, text=True, check=True).stdout
    assert "documents" in tables and "document_chunks" in tables

    again = cli.json("dev")
    assert again["reused"] is True and again["pid"] == started["pid"] and again["applied"] == []

    status = cli.json("dev", "status")
    assert status["running"] and status["applied"] == MIGRATIONS and status["pending"] == 0
    migrations = cli.json("db", "status")["migrations"]
    assert [m["status"] for m in migrations] == ["applied"] * MIGRATIONS
    assert "Up to date" in cli("db", "push").stdout

    user = cli.json("users", "add", "Ann@Example.com", "--team", "red")
    assert user["email"] == "ann@example.com" and user["team"] == "red"

    cli("dev", "stop")
    assert cli("dev", "status", check=False).returncode == 1
    # Data survives a restart.
    restarted = cli.json("dev")
    assert restarted["reused"] is False
    assert [u["email"] for u in cli.json("users", "list")] == ["ann@example.com"]


def test_port_taken_is_a_clear_error(cli):
    with port_taken(cli.port):
        result = cli("dev", check=False)
    assert result.returncode == 1
    assert f"port {cli.port}" in result.stderr and "taken by another program" in result.stderr


def test_port_with_only_time_wait_connections_is_free(cli):
    """Right after a server on the port closed its connections, the port is usable."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", cli.port))
    server.listen()
    client = socket.create_connection(("127.0.0.1", cli.port))
    accepted, _ = server.accept()
    accepted.close()  # the listening side closes first: TIME_WAIT on cli.port
    client.close()
    server.close()
    assert cli.json("dev")["db_url"].endswith(f":{cli.port}/postgres?sslmode=disable")


def test_stale_lock_after_a_crash(cli):
    first = cli.json("dev")
    cli("users", "add", "kept@example.com")
    os.kill(first["pid"], signal.SIGKILL)
    time.sleep(1)
    pidfile = cli.home / "pgdata" / "postmaster.pid"
    assert pidfile.exists()
    # Make it worse: the stale file now names a live process that is not postgres.
    lines = pidfile.read_text().splitlines()
    lines[0] = str(os.getpid())
    pidfile.write_text("\n".join(lines) + "\n")
    assert cli("dev", "status", check=False).returncode == 1
    second = cli.json("dev")
    assert second["pid"] != first["pid"]
    assert [u["email"] for u in cli.json("users", "list")] == ["kept@example.com"]


def test_db_reset(cli):
    cli("dev")
    cli("users", "add", "gone@example.com")
    remote = cli("db", "reset", "-y", "--db-url", "postgresql://u@db.example.com:5432/postgres",
                 check=False)
    assert remote.returncode == 1 and "refusing" in remote.stderr
    assert cli.json("users", "list") != []
    cli("db", "reset", "-y")
    assert cli.json("users", "list") == []
    assert [m["status"] for m in cli.json("db", "status")["migrations"]] == ["applied"] * MIGRATIONS


def test_commands_without_a_database_explain(cli):
    result = cli("db", "status", check=False)
    assert result.returncode == 1
    assert "suparag dev" in result.stderr and "SUPARAG_DB_URL" in result.stderr
    result = cli("db", "status", check=False,
                 env={"SUPARAG_DB_URL": "postgresql://postgres@127.0.0.1:1/postgres"})
    assert result.returncode == 1 and "no database at" in result.stderr


def test_db_url_from_dotenv(cli, tmp_path):
    started = cli.json("dev")
    other = Cli(home=tmp_path / "unused-home", port=free_port(), cwd=cli.cwd)
    (cli.cwd / ".env").write_text(f"SUPARAG_DB_URL={started['db_url']}\n")
    statuses = [m["status"] for m in other.json("db", "status")["migrations"]]
    assert statuses == ["applied"] * MIGRATIONS


def test_init_writes_a_supabase_project(cli, tmp_path):
    target = tmp_path / "app"
    out = cli("init", str(target)).stdout
    written = sorted(p.name for p in (target / "supabase" / "migrations").iterdir())
    assert written == sorted(p.name for p in migrations_dir().iterdir())
    assert (target / "supabase" / "config.toml").exists()
    function = target / "supabase" / "functions" / "embed" / "index.ts"
    assert function.read_text() == (edge_functions_dir() / "embed" / "index.ts").read_text()
    assert "wrote" in out
    # A second run keeps everything, the function the project edited included.
    function.write_text(function.read_text() + "\n// the project's own edit\n")
    assert "kept" in cli("init", str(target)).stdout
    assert function.read_text().endswith("// the project's own edit\n")
    bare = tmp_path / "bare"
    cli("init", str(bare), "--no-edge-function")
    assert not (bare / "supabase" / "functions").exists()
    # A landed migration that differs is never overwritten.
    first = target / "supabase" / "migrations" / written[0]
    first.write_text(first.read_text() + "\n-- local edit\n")
    result = cli("init", str(target), check=False)
    assert result.returncode == 1 and "different content" in result.stderr


def test_help_lists_every_group(cli):
    out = cli("--help").stdout
    for group in ("dev", "db", "users", "init"):
        assert group in out
