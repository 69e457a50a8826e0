"""Entry point: `suparag`, one sub-app per command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import (
    ask,
    bench,
    db,
    demo,
    dev,
    export,
    ingest,
    jobs,
    mcp,
    search,
    serve,
    spaces,
    status,
    token,
    usage,
    users,
    workers,
)
from cli import eval as eval_cmd
from cli._common import console, err_console
from worker.errors import SuparagError

app = typer.Typer(
    name="suparag",
    help="A Supabase-native RAG backend: migrations, RLS-bounded search, and the workers "
    "that embed documents and answer questions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(db.app, name="db")
app.add_typer(users.app, name="users")
app.command()(demo.demo)
app.command()(workers.worker)
app.add_typer(jobs.app, name="jobs")
app.add_typer(bench.app, name="bench")
app.add_typer(eval_cmd.app, name="eval")
app.command()(ingest.ingest)
app.command()(search.search)
app.command()(ask.ask)
app.command()(usage.usage)
app.add_typer(export.app, name="export")
app.add_typer(spaces.app, name="spaces")
app.command()(status.status)
app.command()(token.token)
app.command()(mcp.mcp)
app.command()(serve.serve)


@app.command()
def init(
    directory: Annotated[
        Path, typer.Argument(help="Project folder; its supabase/ folder is created if missing.")
    ] = Path("."),
) -> None:
    """Write suparag's migrations (and a config.toml if none) into a Supabase project.

    Then `supabase db push` deploys them to your project.
    """
    from worker.project import init_project

    result = init_project(directory)
    for path in result.written:
        console.print(f"wrote [green]{path}[/green]")
    for path in result.unchanged:
        console.print(f"kept  {path}")
    console.print("Next: `supabase link` to your project, then `supabase db push`.")


def main() -> None:
    """Run the CLI, turning suparag's own errors into a message and exit code 1."""
    try:
        app()
    except SuparagError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
