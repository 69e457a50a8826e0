"""`suparag token EMAIL`: an access token for a local user, for scripts and curl."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli._common import DbUrlOption, JsonOption, print_json, resolve_db_url
from worker.db import connect
from worker.devstack import stack
from worker.settings import get_settings
from worker.users import find_user


def token(
    email: Annotated[str, typer.Argument(help="Email (or id) of a user in auth.users.")],
    expires_in: Annotated[
        int, typer.Option(min=60, help="Seconds until the token expires.")
    ] = 3600,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Print an access token for a local user, signed with this project's JWT secret.

    It carries the claims Supabase Auth would issue (sub, role=authenticated,
    email, app_metadata with the team, user_metadata), so
    `curl -H "apikey: $ANON" -H "Authorization: Bearer $(suparag token a@example.com)"`
    calls the local API as that user. Only the local API (`suparag dev`) accepts it.
    """
    settings = get_settings()
    with connect(resolve_db_url(db_url)) as conn:
        user = find_user(conn, email)
    access = stack.project_keys(settings).access_token(user, lifetime=expires_in)
    if json_out:
        print_json({"access_token": access, "token_type": "bearer", "expires_in": expires_in,
                    "expires_at": int(time.time()) + expires_in, "user_id": str(user.id),
                    "email": user.email})
    else:
        print(access)
