"""Shared bits of the CLI: consoles, options, output, the database to use, and how to
run this CLI in a child process."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from worker.devstack import stack
from worker.errors import ServerNotRunning
from worker.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)

DbUrlOption = Annotated[
    str | None,
    typer.Option(
        "--db-url",
        help="PostgreSQL URL. Default: SUPARAG_DB_URL, else the local `suparag dev` server.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines.")]


def print_json(data: Any) -> None:
    """JSON on stdout, plain (no colour codes), with anything non-JSON as a string."""
    print(json.dumps(data, indent=2, default=str))


def resolve_db_url(db_url: str | None = None, *, settings: Settings | None = None) -> str:
    """The database to use: an explicit URL, then SUPARAG_DB_URL, then the local server."""
    if db_url:
        return db_url
    settings = settings or get_settings()
    if settings.db_url:
        return settings.db_url
    local = stack.local_server(settings)
    status = local.status()
    if status is None:
        raise ServerNotRunning(
            f"no database configured and the local server in {local.home} is not running: "
            "run `suparag dev`, or set SUPARAG_DB_URL"
        )
    return status.url


def cli_command(*args: str) -> list[str]:
    """The command line that runs `suparag *args` in a child process: this CLI under
    this interpreter (`python -m cli`), so it needs no script on PATH."""
    return [sys.executable, "-m", "cli", *args]
