"""`suparag users`: local users in auth.users."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, print_json, resolve_db_url
from worker import users as users_mod
from worker.db import connect
from worker.errors import ConfigError

app = typer.Typer(help="Manage local users (rows in auth.users) to own documents and search as.")


@app.command()
def add(
    email: Annotated[
        str, typer.Argument(help="The user's email; other commands accept it as --owner/--as.")
    ],
    team: Annotated[
        str | None,
        typer.Option(help="Team, stored in app_metadata where the JWT claim (and RLS) reads it."),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(help="Set the user's password for the local `/auth/v1` (sign-up never "
                     "claims an existing user). Local development only: the value is visible "
                     "to other processes.", show_default=False),
    ] = None,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a user (or set the team, or password, of an existing one)."""
    from worker.devstack.api.auth import MIN_PASSWORD, hash_password

    if password is not None and len(password) < MIN_PASSWORD:
        raise ConfigError(f"--password must be at least {MIN_PASSWORD} characters, as "
                          "Supabase Auth's default asks")
    with connect(resolve_db_url(db_url)) as conn:
        user = users_mod.add_user(conn, email, team=team)
        if password is not None:
            conn.execute("update auth.users set encrypted_password = %s,"
                         " email_confirmed_at = coalesce(email_confirmed_at, now())"
                         " where id = %s", (hash_password(password), user.id))
        conn.commit()
    if json_out:
        print_json({"id": str(user.id), "email": user.email, "team": user.team})
    else:
        team_note = f" in team {user.team}" if user.team else ""
        console.print(f"User {user.email}{team_note}: {user.id}")


@app.command("list")
def list_(db_url: DbUrlOption = None, json_out: JsonOption = False) -> None:
    """List users with their teams."""
    with connect(resolve_db_url(db_url)) as conn:
        found = users_mod.list_users(conn)
    if json_out:
        print_json([{"id": str(u.id), "email": u.email, "team": u.team} for u in found])
        return
    table = Table()
    for column in ("email", "team", "id"):
        table.add_column(column)
    for user in found:
        table.add_row(user.email, user.team or "", str(user.id))
    console.print(table)
