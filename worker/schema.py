"""The schema: where its SQL lives, and applying the migrations as the Supabase CLI does.

The SQL ships inside the wheel (`supabase/migrations`, `supabase/config.toml`
and `sql/` under `worker/_data/`, see pyproject's force-include); an editable
install or a checkout reads it from the repository. Both resolve to the same
files.

History lives in `supabase_migrations.schema_migrations (version, statements,
name)`, the table `supabase db push` reads and writes, so either tool sees
what the other applied. A push runs in one transaction under an advisory
lock: two concurrent pushes cannot interleave, and a failing migration leaves
the database exactly as it was. That is why a migration may not control the
transaction itself: a `commit;` inside one would end the push's transaction
early and release the lock. The one form accepted is a whole file wrapped in
`begin;` ... `commit;` (landed migration 20261121000700 is written so), which
runs as the push's own transaction with the wrapper left out.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from worker.errors import MigrationFailed

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent

_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")
# Arbitrary but fixed: serialises `db push` across processes and machines.
_LOCK_KEY = 0x5355504152414701


def _pick(packaged: Path, checkout: Path) -> Path:
    return packaged if packaged.exists() else checkout


def migrations_dir() -> Path:
    """The deployable migrations, named as the Supabase CLI names them."""
    return _pick(_PACKAGE / "_data" / "migrations", _CHECKOUT / "supabase" / "migrations")


def supabase_config() -> Path:
    """The Supabase CLI `config.toml` that `suparag init` writes when none exists."""
    return _pick(_PACKAGE / "_data" / "config.toml", _CHECKOUT / "supabase" / "config.toml")


def edge_functions_dir() -> Path:
    """The Supabase Edge Functions `suparag init` writes (embed with gte-small)."""
    return _pick(_PACKAGE / "_data" / "functions", _CHECKOUT / "supabase" / "functions")


def standin_sql() -> Path:
    """The local-only SQL that makes plain PostgreSQL look like a Supabase database."""
    return _pick(_PACKAGE / "_data" / "sql", _CHECKOUT / "sql") / "supabase_standin.sql"


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def body(self) -> str:
        """The SQL to run inside the push's transaction; refuses transaction control."""
        return checked_body(self.sql, self.path.name)


@dataclass(frozen=True)
class MigrationState:
    """Applied and pending migrations of one database."""

    applied: list[Migration]
    pending: list[Migration]
    # Versions recorded in the database with no file here (applied by a newer
    # suparag, or by hand); reported, never touched.
    unknown: list[str]


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files of a folder, in version order."""
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationFailed(
                f"{path.name} is not named like a Supabase migration (YYYYMMDDHHMMSS_name.sql)"
            )
        found.append(Migration(match["version"], match["name"], path))
    return found


def _ensure_history(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create schema if not exists supabase_migrations")
    conn.execute(
        "create table if not exists supabase_migrations.schema_migrations"
        " (version text not null primary key, statements text[], name text)"
    )


def _applied_versions(conn: psycopg.Connection[Any]) -> set[str]:
    exists = conn.execute(
        "select to_regclass('supabase_migrations.schema_migrations') is not null as present"
    ).fetchone()
    if not exists or not exists["present"]:
        return set()
    rows = conn.execute("select version from supabase_migrations.schema_migrations").fetchall()
    return {row["version"] for row in rows}


def state(conn: psycopg.Connection[Any], directory: Path | None = None) -> MigrationState:
    """Which migrations this database has and lacks."""
    migrations = discover(directory)
    applied = _applied_versions(conn)
    known = {m.version for m in migrations}
    return MigrationState(
        applied=[m for m in migrations if m.version in applied],
        pending=[m for m in migrations if m.version not in applied],
        unknown=sorted(applied - known),
    )


def push(conn: psycopg.Connection[Any], directory: Path | None = None) -> list[Migration]:
    """Apply every pending migration in order; returns those applied (none: a no-op)."""
    done: list[Migration] = []
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        _ensure_history(conn)
        applied = _applied_versions(conn)
        for migration in discover(directory):
            if migration.version in applied:
                continue
            body = migration.body()
            try:
                conn.execute(body.encode())
            except psycopg.Error as exc:
                raise MigrationFailed(
                    f"migration {migration.path.name} failed, nothing was applied: "
                    f"{exc.diag.message_primary or exc}"
                ) from exc
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, statements, name)"
                " values (%s, %s, %s)",
                (migration.version, [migration.sql], migration.name),
            )
            done.append(migration)
    return done


# -- transaction control ------------------------------------------------------------------

# What a statement may not start with inside a push: each ends, nests or splits
# the transaction the push runs in.
_CONTROL = frozenset({"begin", "commit", "rollback", "end", "abort", "start", "savepoint",
                      "release"})
# Comments, quoted strings and identifiers, and dollar-quoted bodies are blanked
# out before statements are split, so a `begin` or a `;` inside a function body
# is never mistaken for one.
_OPAQUE = re.compile(
    r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(\$[A-Za-z_0-9]*\$).*?\1",
    re.DOTALL,
)
_WORD = re.compile(r"[A-Za-z_]+")


def _statements(sql: str) -> list[tuple[int, int, str]]:
    """Top-level statements as (start of its first word, end after its `;`, first word).

    A semicolon inside an SQL-standard body (`begin atomic ... end`) does not
    end the statement.
    """
    blank = _OPAQUE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), sql)
    found: list[tuple[int, int, str]] = []
    start = 0
    for part in re.finditer(r"[^;]*(?:;|$)", blank):
        text = " ".join(blank[start:part.end()].lower().split())
        if part.end() < len(blank) and "begin atomic" in text and \
                not re.search(r"\bend\s*;$", text):
            continue  # inside an atomic body: the statement goes on
        word = _WORD.search(blank, start, part.end())
        if word:
            found.append((word.start(), part.end(), word.group().lower()))
        start = part.end()
    return found


def checked_body(sql: str, name: str) -> str:
    """sql without a whole-file `begin;` ... `commit;` wrapper; any other
    transaction control is refused with MigrationFailed."""
    statements = _statements(sql)
    if (len(statements) >= 2 and statements[0][2] in ("begin", "start")
            and statements[-1][2] in ("commit", "end")):
        (first, first_end, _), (last, last_end, _) = statements[0], statements[-1]
        sql = sql[:first] + sql[first_end:last] + sql[last_end:]
        statements = _statements(sql)
    for start, _end, word in statements:
        if word in _CONTROL:
            line = sql.count("\n", 0, start) + 1
            raise MigrationFailed(
                f"{name}, line {line}: `{word}` controls the transaction, which a migration "
                "may not do: `suparag db push` applies all pending migrations in one "
                "transaction. Remove it (the one form allowed is a whole file wrapped in "
                "begin; ... commit;)"
            )
    return sql


def apply_standin(conn: psycopg.Connection[Any]) -> None:
    """Apply the local Supabase stand-in (roles, auth, extensions schema, publication).

    Local databases only: a Supabase project already has all of it.
    """
    sql = standin_sql().read_text(encoding="utf-8")
    with conn.transaction():
        # Roles are cluster-wide: serialise concurrent bootstraps of two databases.
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY + 1,))
        conn.execute(sql.encode())
