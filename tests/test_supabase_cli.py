"""The Supabase CLI, unchanged, against the local database (issue 12): `db push`,
`migration list`, `migration down`, `db advisors` and `inspect db`, given the URL that
`suparag dev` prints. The CLI is the npm release pinned in
tests/supabase-cli/package-lock.json, installed here with `npm ci` when missing (its
binary comes from the platform's optional dependency, as npm serves it); Node >= 20.

Each CLI call takes a few seconds (it looks for updates it cannot reach offline), so
the module shares one database where it can: about a minute in all."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import create_database

from worker import schema
from worker.db import connect
from worker.devstack.postgres import ServerStatus

CLI_DIR = Path(__file__).parent / "supabase-cli"
VERSION = "2.117.0"


def supabase_command() -> list[str]:
    """The pinned CLI, installed first if tests/supabase-cli/node_modules is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the Supabase CLI tests: install Node >= 20 "
                    "(with npm) and run again")
    shim = CLI_DIR / "node_modules" / "supabase" / "dist" / "supabase.js"
    if not shim.is_file():
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLI_DIR,
                                   capture_output=True, text=True, timeout=600)
        if installed.returncode != 0:
            pytest.fail(f"`npm ci` in {CLI_DIR} failed: {installed.stderr.strip()[-2000:]}")
    return [node, str(shim)]


class SupabaseCli:
    """`supabase ...` in a project folder holding a copy of this repo's migrations."""

    def __init__(self, workdir: Path) -> None:
        self.command = supabase_command()
        self.workdir = workdir

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.command, *args, "--yes"], cwd=self.workdir,
                              capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"supabase {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--output-format", "json").stdout)


@pytest.fixture(scope="module")
def supabase(tmp_path_factory: pytest.TempPathFactory) -> SupabaseCli:
    # A project folder of its own: the CLI writes supabase/.temp into it.
    workdir = tmp_path_factory.mktemp("supabase-cli-project")
    shutil.copytree(schema.migrations_dir(), workdir / "supabase" / "migrations")
    cli = SupabaseCli(workdir)
    installed = json.loads((CLI_DIR / "node_modules" / "supabase" / "package.json").read_text())
    assert installed["version"] == VERSION, "run `npm ci` in tests/supabase-cli"
    return cli


def printed_url(pg_server: ServerStatus, database: str) -> str:
    """The URL `suparag dev` prints, for another database on the same server."""
    base, _, tail = pg_server.url.rpartition("/")
    _, _, query = tail.partition("?")
    return f"{base}/{database}" + (f"?{query}" if query else "")


def standin_database(pg_server: ServerStatus) -> tuple[str, str]:
    """A new database with only the Supabase stand-in: (psycopg URL, printed URL)."""
    url = create_database(pg_server, template="template1")
    with connect(url, autocommit=True) as conn:
        schema.apply_standin(conn)
    return url, printed_url(pg_server, url.rpartition("/")[2])


def cli_history(supabase: SupabaseCli, url: str) -> list[tuple[str, str]]:
    """`migration list` as (local, remote) version pairs."""
    listed = supabase.json("migration", "list", "--db-url", url)
    return [(m["local"], m["remote"]) for m in listed["migrations"]]


def all_applied() -> list[tuple[str, str]]:
    return [(m.version, m.version) for m in schema.discover()]


@pytest.fixture(scope="module")
def pushed(pg_server: ServerStatus, supabase: SupabaseCli) -> Iterator[tuple[str, str]]:
    """A database migrated by `supabase db push`, shared by the module's tests; a test
    that changes its history puts it back."""
    url, cli_url = standin_database(pg_server)
    supabase("db", "push", "--db-url", cli_url)
    yield url, cli_url


def test_cli_push_and_suparag_agree_on_history(pushed, supabase, pg_server):
    url, cli_url = pushed
    assert cli_history(supabase, cli_url) == all_applied()
    with connect(url) as conn:
        state = schema.state(conn)
        assert state.pending == [] and state.unknown == []
        assert schema.push(conn) == []

    # The other order: `suparag db push`, then the CLI finds every migration applied.
    other_url, other_cli_url = standin_database(pg_server)
    with connect(other_url, autocommit=True) as conn:
        assert len(schema.push(conn)) == len(schema.discover())
    assert cli_history(supabase, other_cli_url) == all_applied()


def test_advisors_report_no_error_or_warning(pushed, supabase):
    _, cli_url = pushed
    # --fail-on warn: the exit status a project's CI would gate on.
    found = supabase.json("db", "advisors", "--db-url", cli_url, "--level", "info",
                          "--fail-on", "warn")["results"]
    assert [(f["level"], f["name"], f["detail"]) for f in found
            if f["level"] in ("ERROR", "WARN")] == []
    # The lints ran: the private queues are closed by default (RLS, no policy), on purpose.
    assert {"INFO"} == {f["level"] for f in found}
    assert any(f["name"] == "rls_enabled_no_policy"
               and f["metadata"]["schema"] == "suparag_private" for f in found)


def test_inspect_db_reads_pg_stat_statements(pushed, supabase):
    _, cli_url = pushed
    outliers = supabase.json("inspect", "db", "outliers", "--db-url", cli_url)["rows"]
    # The push's own statements are there to rank.
    assert outliers and all("query" in row and "total_exec_time" in row for row in outliers)


def test_migration_down_keeps_auth_and_push_restores(pushed, supabase):
    url, cli_url = pushed
    latest = schema.discover()[-1].version
    supabase("migration", "down", "--db-url", cli_url, "--last", "1")

    history = cli_history(supabase, cli_url)
    assert history == [*all_applied()[:-1], (latest, "")]
    with connect(url) as conn:
        managed = {r["nspname"]: r["owner"] for r in conn.execute(
            "select nspname, nspowner::regrole::text as owner from pg_namespace"
            " where nspname in ('auth', 'suparag_realtime')")}
        assert managed == {"auth": "supabase_admin", "suparag_realtime": "supabase_admin"}
        assert conn.execute("select auth.uid() is null as ok").fetchone() == {"ok": True}
        # The replayed migrations are all there (documents references auth.users).
        assert conn.execute("select to_regclass('public.documents') is not null as ok"
                            ).fetchone() == {"ok": True}
        assert [m.version for m in schema.state(conn).pending] == [latest]

    pushed_again = supabase("db", "push", "--db-url", cli_url)
    assert f"Applying migration {latest}_" in pushed_again.stdout + pushed_again.stderr
    with connect(url) as conn:
        state = schema.state(conn)
        assert state.pending == [] and state.unknown == []
