"""Apply the deployable migrations and record them as the Supabase CLI does.

History lives in `supabase_migrations.schema_migrations (version, statements,
name)`, the table `supabase db push` reads and writes, so either tool sees
what the other applied. A push runs in one transaction under an advisory
lock: two concurrent pushes cannot interleave, and a failing migration leaves
the database exactly as it was.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from worker.errors import MigrationFailed
from worker.sqlfiles import migrations_dir, standin_sql

_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")
# Arbitrary but fixed: serialises `db push` across processes and machines.
_LOCK_KEY = 0x5355504152414701


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
            try:
                conn.execute(migration.sql.encode())
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


def apply_standin(conn: psycopg.Connection[Any]) -> None:
    """Apply the local Supabase stand-in (roles, auth, extensions schema, publication).

    Local databases only: a Supabase project already has all of it.
    """
    sql = standin_sql().read_text(encoding="utf-8")
    with conn.transaction():
        # Roles are cluster-wide: serialise concurrent bootstraps of two databases.
        conn.execute("select pg_advisory_xact_lock(%s)", (_LOCK_KEY + 1,))
        conn.execute(sql.encode())
