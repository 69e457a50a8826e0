"""The Supabase CLI, unchanged, against the local database (issue 12): `db push`,
`migration list`, `migration down`, `db reset`, `db advisors` and `inspect db`, given the
URL that `suparag dev` prints, as `--remote=<url>` (CLI 3 deprecates `--db-url`), in a
project folder that `suparag init` wrote. The CLI is the npm release pinned in
tests/supabase-cli/package-lock.json, installed here with `npm ci` when missing (its
binary comes from the platform's optional dependency, as npm serves it); Node >= 20.

The module shares one database where it can."""

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
from worker.project import init_project
from worker.users import add_user

CLI_DIR = Path(__file__).parent / "supabase-cli"
VERSION = "3.1.0"


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
    """`supabase ...` in a project folder that `suparag init` wrote."""

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
        # Nothing in the project (config.toml) or in how we call it is on its way out.
        assert "deprecated" not in done.stdout + done.stderr, done.stderr
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--output-format", "json").stdout)


@pytest.fixture(scope="module")
def supabase(tmp_path_factory: pytest.TempPathFactory) -> SupabaseCli:
    # A project folder of its own, as `suparag init` writes it (the migrations, config.toml
    # and the edge function, which the CLI reads as a user's project); the CLI writes
    # supabase/.temp into it.
    workdir = tmp_path_factory.mktemp("supabase-cli-project")
    init_project(workdir)
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
    listed = supabase.json("migration", "list", f"--remote={url}")
    return [(m["local"], m["remote"]) for m in listed["migrations"]]


def all_applied() -> list[tuple[str, str]]:
    return [(m.version, m.version) for m in schema.discover()]


@pytest.fixture(scope="module")
def pushed(pg_server: ServerStatus, supabase: SupabaseCli) -> Iterator[tuple[str, str]]:
    """A database migrated by `supabase db push`, shared by the module's tests; a test
    that changes its history puts it back."""
    url, cli_url = standin_database(pg_server)
    supabase("db", "push", f"--remote={cli_url}")
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
    found = supabase.json("db", "advisors", f"--remote={cli_url}", "--level", "info",
                          "--fail-on", "warn")["results"]
    assert [(f["level"], f["name"], f["detail"]) for f in found
            if f["level"] in ("ERROR", "WARN")] == []
    # The lints ran: the private queues are closed by default (RLS, no policy), on purpose.
    assert {"INFO"} == {f["level"] for f in found}
    assert any(f["name"] == "rls_enabled_no_policy"
               and f["metadata"]["schema"] == "suparag_private" for f in found)


def test_inspect_db_reads_pg_stat_statements(pushed, supabase):
    _, cli_url = pushed
    outliers = supabase.json("inspect", "db", "outliers", f"--remote={cli_url}")["rows"]
    # The push's own statements are there to rank.
    assert outliers and all("query" in row and "total_exec_time" in row for row in outliers)


def test_migration_down_keeps_auth_and_push_restores(pushed, supabase):
    url, cli_url = pushed
    latest = schema.discover()[-1].version
    supabase("migration", "down", f"--remote={cli_url}", "--last", "1")

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

    pushed_again = supabase("db", "push", f"--remote={cli_url}")
    assert f"Applying migration {latest}_" in pushed_again.stdout + pushed_again.stderr
    with connect(url) as conn:
        state = schema.state(conn)
        assert state.pending == [] and state.unknown == []


SHAPE = """
select 'relation' as kind, n.nspname || '.' || c.relname || ' ' || c.relkind::text as what
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname in ('public', 'suparag_private', 'suparag_realtime')
union all
select 'function', p.oid::regprocedure::text || ' ' || p.prosecdef::text
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where n.nspname in ('public', 'suparag_private', 'suparag_realtime')
union all
select 'policy', schemaname || '.' || tablename || ' ' || policyname || ' ' || qual
  from pg_policies
union all
select 'trigger', tgrelid::regclass::text || ' ' || tgname
  from pg_trigger where not tgisinternal
union all
select 'extension', extname from pg_extension
"""


def shape(url: str) -> set[tuple[str, str]]:
    """What the migrations make: relations, functions, policies, triggers, extensions."""
    with connect(url) as conn:
        return {(r["kind"], r["what"]) for r in conn.execute(SHAPE)}


def test_db_reset_replays_the_migrations(pg_server, supabase, db_url):
    """CLI 3 resets a database given by URL without Docker: it drops what the migrations
    made, with the data, and truncates auth's tables (as on Supabase), then applies every
    migration again. The result is what a fresh push makes, and the queue's trigger works."""
    url, cli_url = standin_database(pg_server)
    supabase("db", "push", f"--remote={cli_url}")
    with connect(url) as conn:
        owner = add_user(conn, "before@example.com").id
        conn.execute("insert into public.documents (owner_id, title, content)"
                     " values (%s, 'before', 'written before the reset')", (owner,))
        conn.commit()

    reset = supabase("db", "reset", f"--remote={cli_url}", "--no-seed")
    assert f"Applying migration {schema.discover()[-1].path.name}" in reset.stdout + reset.stderr
    assert cli_history(supabase, cli_url) == all_applied()
    assert shape(url) == shape(db_url)  # db_url: the template, migrated by suparag
    with connect(url) as conn:
        state = schema.state(conn)
        assert state.pending == [] and state.unknown == []
        assert conn.execute("select (select count(*) from public.documents) as docs,"
                            " (select count(*) from suparag_private.embedding_jobs) as jobs,"
                            " (select count(*) from auth.users) as users").fetchone() == {
            "docs": 0, "jobs": 0, "users": 0}
        owner = add_user(conn, "after@example.com").id
        doc = conn.execute("insert into public.documents (owner_id, title, content)"
                           " values (%s, 'after', 'written after the reset') returning id",
                           (owner,)).fetchone()
        job = conn.execute("select status from suparag_private.embedding_jobs"
                           " where document_id = %s", (doc["id"],)).fetchone()
        conn.commit()
        assert job == {"status": "queued"}


def test_without_remote_the_cli_targets_the_local_server(pg_server, supabase, tmp_path):
    """CLI 3 targets the local stack unless given --remote: 127.0.0.1 at config.toml's
    [db] port, as postgres, database postgres. `suparag dev` serves there (54322, the
    CLI's default), so with it running `supabase db push`, `migration list` and the rest
    need no URL. Here the project's [db] port is the test server's, whose postgres
    database has no migrations applied."""
    project = tmp_path / "project"
    init_project(project)
    config = project / "supabase" / "config.toml"
    text = config.read_text()
    assert "[db]\nport = 54322\n" in text
    config.write_text(text.replace("[db]\nport = 54322\n", f"[db]\nport = {pg_server.port}\n"))
    cli = SupabaseCli(project)
    listed = cli.json("migration", "list")["migrations"]
    assert [(m["local"], m["remote"]) for m in listed] == [
        (m.version, "") for m in schema.discover()]
    assert f"127.0.0.1:{pg_server.port}" in cli("migration", "list").stderr
