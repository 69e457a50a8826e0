"""`suparag dev`: the local database (and, later, the API and workers)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli._common import JsonOption, console, print_json
from worker import migrations
from worker.db import connect
from worker.local import stack
from worker.settings import get_settings

app = typer.Typer(
    help="Run the local stack: an embedded PostgreSQL with pgvector that looks like a "
    "Supabase project, with suparag's migrations applied.",
    no_args_is_help=False,
)

PortOption = Annotated[
    int | None,
    typer.Option(
        "--db-port",
        help="Port for the local PostgreSQL [default: SUPARAG_DB_PORT or 54322].",
    ),
]


@app.callback(invoke_without_command=True)
def dev(ctx: typer.Context, db_port: PortOption = None, json_out: JsonOption = False) -> None:
    """Start the local database (or reuse it), apply pending migrations, print its URL.

    Data lives in SUPARAG_HOME (default ./.suparag); running it again reuses it.
    The server keeps running in the background until `suparag dev stop`.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = get_settings()
    with console.status("Starting the local database…", spinner="dots"):
        started = stack.start(settings, port=db_port)
    if json_out:
        print_json({
            "db_url": started.server.url,
            "pid": started.server.pid,
            "reused": started.reused,
            "applied": [m.path.name for m in started.applied],
        })
        return
    verb = "Reusing" if started.reused else "Started"
    if db_port is not None and db_port != started.server.port:
        console.print(
            f"[yellow]note:[/yellow] the server already runs on port {started.server.port}; "
            f"run `suparag dev stop` first to move it to {db_port}."
        )
    console.print(f"{verb} local PostgreSQL (pid {started.server.pid}, data in {settings.home}).")
    for migration in started.applied:
        console.print(f"  applied [green]{migration.path.name}[/green]")
    console.print(f"\nDB URL: [bold]{started.server.url}[/bold]")
    console.print("Stop it with `suparag dev stop`.")


@app.command()
def status(json_out: JsonOption = False) -> None:
    """Show whether the local database runs, its URL, and its migrations."""
    settings = get_settings()
    server = stack.local_server(settings)
    running = server.status()
    info: dict[str, object] = {
        "running": running is not None,
        "home": str(server.home),
        "log": str(server.log_path),
    }
    if running is not None:
        info.update(db_url=running.url, pid=running.pid)
        with connect(running.url) as conn:
            state = migrations.state(conn)
        info.update(applied=len(state.applied), pending=len(state.pending))
    if json_out:
        print_json(info)
    elif running is None:
        console.print(f"Local database: [yellow]stopped[/yellow] (data in {server.home}).")
        console.print("Start it with `suparag dev`.")
    else:
        console.print(f"Local database: [green]running[/green] (pid {running.pid})")
        console.print(f"DB URL: [bold]{running.url}[/bold]")
        console.print(f"Migrations: {info['applied']} applied, {info['pending']} pending")
        console.print(f"Logs: {server.log_path}")
    if running is None:
        raise typer.Exit(code=1)


@app.command()
def stop() -> None:
    """Stop the local database. Its data stays for the next `suparag dev`."""
    settings = get_settings()
    if stack.local_server(settings).stop():
        console.print("Stopped the local database.")
    else:
        console.print("The local database was not running.")
