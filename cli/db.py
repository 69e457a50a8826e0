"""`suparag db`: apply and inspect migrations."""

from __future__ import annotations

import typer
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, print_json, resolve_db_url
from worker import schema
from worker.db import connect, redact
from worker.devstack import stack
from worker.settings import get_settings

app = typer.Typer(help="Apply and inspect suparag's migrations (the Supabase CLI's history table).")


@app.command()
def push(db_url: DbUrlOption = None) -> None:
    """Apply pending migrations in order and record them in supabase_migrations.schema_migrations.

    Works against any PostgreSQL with Supabase's roles, e.g. a Supabase project's
    direct connection string; `supabase db push` sees the same history.
    """
    url = resolve_db_url(db_url)
    with connect(url) as conn:
        applied = schema.push(conn)
    if not applied:
        console.print(f"Up to date: nothing to apply on {redact(url)}.")
    for migration in applied:
        console.print(f"applied [green]{migration.path.name}[/green]")


@app.command()
def status(db_url: DbUrlOption = None, json_out: JsonOption = False) -> None:
    """List applied and pending migrations."""
    url = resolve_db_url(db_url)
    with connect(url) as conn:
        state = schema.state(conn)
    rows = [(m, "applied") for m in state.applied] + [(m, "pending") for m in state.pending]
    rows.sort(key=lambda pair: pair[0].version)
    if json_out:
        print_json({
            "migrations": [
                {"version": m.version, "name": m.name, "status": s} for m, s in rows
            ],
            "unknown_applied": state.unknown,
        })
        return
    table = Table(title=f"Migrations on {redact(url)}")
    table.add_column("version")
    table.add_column("name")
    table.add_column("status")
    for migration, state_name in rows:
        colour = "green" if state_name == "applied" else "yellow"
        table.add_row(migration.version, migration.name, f"[{colour}]{state_name}[/{colour}]")
    console.print(table)
    for version in state.unknown:
        console.print(f"[yellow]applied in the database but not known here: {version}[/yellow]")


@app.command()
def reset(
    db_url: DbUrlOption = None,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Drop and rebuild the LOCAL database from the migrations. Refuses any other database."""
    settings = get_settings()
    stack.require_local(settings, db_url)
    if not yes:
        typer.confirm("This deletes every row in the local database. Continue?", abort=True)
    applied = stack.reset(settings, db_url)
    console.print(f"Rebuilt the local database; applied {len(applied)} migrations.")
