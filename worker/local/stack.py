"""The local stack: the embedded server, made to look like Supabase, migrated."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from worker import migrations
from worker.db import connect
from worker.errors import RemoteRefused, ServerNotRunning
from worker.local.postgres import LocalPostgres, ServerStatus
from worker.settings import Settings


@dataclass(frozen=True)
class DevStarted:
    """What `suparag dev` did."""

    server: ServerStatus
    reused: bool
    applied: list[migrations.Migration]


def local_server(settings: Settings, *, port: int | None = None) -> LocalPostgres:
    """The embedded server of this project (its data under settings.home)."""
    return LocalPostgres(settings.home, port=port or settings.db_port)


def start(settings: Settings, *, port: int | None = None) -> DevStarted:
    """Start (or reuse) the local server, apply the stand-in, then pending migrations."""
    server = local_server(settings, port=port)
    reused = server.status() is not None
    status = server.start()
    with connect(status.url, autocommit=True) as conn:
        migrations.apply_standin(conn)
        applied = migrations.push(conn)
    return DevStarted(server=status, reused=reused, applied=applied)


def require_local(settings: Settings, db_url: str | None) -> ServerStatus:
    """The running local server, if db_url (or the configuration) points at it.

    Refuses anything else: destructive commands never touch a remote database.
    """
    status = local_server(settings).status()
    target = db_url or settings.db_url
    if target is not None:
        parts = urlsplit(target)
        is_ours = (
            status is not None
            and parts.hostname in {"127.0.0.1", "localhost", "::1"}
            and (parts.port or 5432) == status.port
        )
        if not is_ours:
            raise RemoteRefused(
                f"refusing: {parts.hostname}:{parts.port or 5432} is not this project's local "
                "database. `db reset` only rebuilds the server that `suparag dev` runs."
            )
    if status is None:
        raise ServerNotRunning("the local server is not running: start it with `suparag dev`")
    return status


def reset(settings: Settings, db_url: str | None = None) -> list[migrations.Migration]:
    """Drop and rebuild the local `postgres` database: stand-in, then every migration."""
    status = require_local(settings, db_url)
    maintenance = status.url.rsplit("/", 1)[0] + "/template1"
    with connect(maintenance, autocommit=True) as conn:
        conn.execute("drop database if exists postgres with (force)")
        conn.execute("create database postgres")
    with connect(status.url, autocommit=True) as conn:
        migrations.apply_standin(conn)
        return migrations.push(conn)
