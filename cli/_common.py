"""Shared bits of the CLI: consoles, options, output."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

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
