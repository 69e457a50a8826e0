"""Local users in `auth.users`, and the JWT claims Supabase would issue them.

The team lives in `raw_app_meta_data` (a JWT's `app_metadata`), which only the
operator sets; that is what the RLS policies read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.errors import UserNotFound


@dataclass(frozen=True)
class User:
    """A row of auth.users, as suparag uses it."""

    id: uuid.UUID
    email: str
    app_metadata: dict[str, Any] = field(default_factory=dict)
    user_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def team(self) -> str | None:
        team = self.app_metadata.get("team")
        return str(team) if team is not None else None

    def claims(self) -> dict[str, Any]:
        """The access-token claims Supabase Auth issues for this user (minus exp/iat)."""
        return {
            "sub": str(self.id),
            "role": "authenticated",
            "aud": "authenticated",
            "email": self.email,
            "app_metadata": self.app_metadata,
            "user_metadata": self.user_metadata,
            "is_anonymous": False,
        }


_COLUMNS = "id, email, raw_app_meta_data as app_metadata, raw_user_meta_data as user_metadata"


def _user(row: dict[str, Any]) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        app_metadata=row["app_metadata"] or {},
        user_metadata=row["user_metadata"] or {},
    )


def add_user(
    conn: psycopg.Connection[Any],
    email: str,
    *,
    team: str | None = None,
    user_metadata: dict[str, Any] | None = None,
) -> User:
    """Create a user, or update the team of an existing one with that email."""
    app_metadata: dict[str, Any] = {"provider": "email", "providers": ["email"]}
    if team is not None:
        app_metadata["team"] = team
    row = conn.execute(
        f"""
        insert into auth.users (email, raw_app_meta_data, raw_user_meta_data, email_confirmed_at)
        values (lower(%(email)s), %(app)s, %(user)s, now())
        on conflict (email) do update
          set raw_app_meta_data = auth.users.raw_app_meta_data || excluded.raw_app_meta_data,
              updated_at = now()
        returning {_COLUMNS}
        """,
        {"email": email, "app": Jsonb(app_metadata), "user": Jsonb(user_metadata or {})},
    ).fetchone()
    assert row is not None
    return _user(row)


def find_user(conn: psycopg.Connection[Any], who: str) -> User:
    """A user by email or by id."""
    try:
        user_id: uuid.UUID | None = uuid.UUID(who)
    except ValueError:
        user_id = None
    row = conn.execute(
        f"select {_COLUMNS} from auth.users where id = %s or email = lower(%s)",
        (user_id, who),
    ).fetchone()
    if row is None:
        raise UserNotFound(f"no user {who!r}: create one with `suparag users add {who}`")
    return _user(row)


def asker(conn: psycopg.Connection[Any], user_id: uuid.UUID | str) -> User:
    """A question's asker by id, through suparag_private.asker: the answer worker's way
    in, since its role (suparag_worker) may not read auth.users itself."""
    row = conn.execute("select * from suparag_private.asker(%s)", (user_id,)).fetchone()
    if row is None:
        raise UserNotFound(f"no user {str(user_id)!r}: create one with "
                           f"`suparag users add {user_id}`")
    return _user(row)


def list_users(conn: psycopg.Connection[Any]) -> list[User]:
    """Every user, oldest first."""
    rows = conn.execute(f"select {_COLUMNS} from auth.users order by created_at, email").fetchall()
    return [_user(row) for row in rows]
