"""The local stack: the embedded server, made to look like Supabase, migrated, the API
and the workers."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import psycopg

from worker import schema
from worker.db import connect
from worker.devstack.api.keys import ProjectKeys, load_or_create
from worker.devstack.postgres import LocalPostgres, ServerStatus
from worker.devstack.processes import ApiStatus, LocalApi, LocalWorkers, WorkerStatus
from worker.errors import RemoteRefused, ServerNotRunning
from worker.settings import Settings


@dataclass(frozen=True)
class DevStarted:
    """What `suparag dev` did."""

    server: ServerStatus
    reused: bool
    applied: list[schema.Migration]
    api: ApiStatus | None = None
    api_reused: bool = False
    keys: ProjectKeys | None = None
    workers: WorkerStatus | None = None
    workers_reused: bool = False


def local_server(settings: Settings, *, port: int | None = None) -> LocalPostgres:
    """The embedded server of this project (its data under settings.home)."""
    return LocalPostgres(settings.home, port=port or settings.db_port)


def local_api(settings: Settings, *, port: int | None = None,
              db_port: int | None = None) -> LocalApi:
    """The API process of this project (pidfile and log under settings.home).

    Its port: the one given, else SUPARAG_API_PORT, else one below the
    database's (54321 next to 54322, Supabase's pair), so two projects with
    different SUPARAG_DB_PORTs never fight over the API port.
    """
    chosen = port or settings.api_port or (db_port or settings.db_port) - 1
    return LocalApi(settings.home, port=chosen)


def local_workers(settings: Settings) -> LocalWorkers:
    """The background `suparag worker` of this project (pidfile and log under settings.home)."""
    return LocalWorkers(settings.home)


def project_keys(settings: Settings) -> ProjectKeys:
    """The JWT secret and API keys of this project, made on first use."""
    return load_or_create(settings.home.expanduser().resolve())


def start(settings: Settings, *, port: int | None = None, api_port: int | None = None,
          api: bool = False, worker_command: Sequence[str] | None = None) -> DevStarted:
    """Start (or reuse) the local server, apply the stand-in, then pending migrations.

    With api, also start (or reuse) the API on top of it, as
    `supabase start` does, and return once it answers. With worker_command (how
    the caller runs `suparag worker`, see `LocalWorkers.start`), also start (or
    reuse) the workers (embeddings and answers) in the background.
    """
    server = local_server(settings, port=port)
    reused = server.status() is not None
    status = server.start()
    with connect(status.url, autocommit=True) as conn:
        schema.apply_standin(conn)
        applied = schema.push(conn)
        secret = wake_secret(conn)
    started = DevStarted(server=status, reused=reused, applied=applied)
    if api:
        keys = project_keys(settings)
        api_status, api_reused = local_api(settings, port=api_port,
                                           db_port=port).start(status.url)
        started = replace(started, api=api_status, api_reused=api_reused, keys=keys)
    if worker_command is not None:
        worker_status, workers_reused = local_workers(settings).start(
            status.url, worker_command, wake_secret=secret)
        started = replace(started, workers=worker_status, workers_reused=workers_reused)
    return started


WAKE_SECRET_NAME = "suparag_wake_secret"


def wake_secret(conn: psycopg.Connection[Any]) -> str:
    """The local Vault's wake-up secret (migration 20261202030000), made on first use, as an
    operator makes it on Supabase: the pg_net trigger sends it, the worker requires it."""
    row = conn.execute("select decrypted_secret as s from vault.decrypted_secrets"
                       " where name = %s", (WAKE_SECRET_NAME,)).fetchone()
    if row is not None:
        return str(row["s"])
    made = secrets.token_urlsafe(32)
    conn.execute("select vault.create_secret(%s, %s)", (made, WAKE_SECRET_NAME))
    return made


def stop(settings: Settings) -> tuple[bool, bool, bool]:
    """Stop the workers, the API, then the database. Returns whether each was running."""
    workers_ran = local_workers(settings).stop()
    api_ran = local_api(settings).stop()
    return workers_ran, api_ran, local_server(settings).stop()


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


def reset(settings: Settings, db_url: str | None = None) -> list[schema.Migration]:
    """Drop and rebuild the local `postgres` database: stand-in, then every migration."""
    status = require_local(settings, db_url)
    maintenance = status.url.rsplit("/", 1)[0] + "/template1"
    with connect(maintenance, autocommit=True) as conn:
        conn.execute("drop database if exists postgres with (force)")
        conn.execute("create database postgres")
    with connect(status.url, autocommit=True) as conn:
        schema.apply_standin(conn)
        return schema.push(conn)
