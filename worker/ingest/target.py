"""Who owns what a run writes, and how it is shared: checked before anything is read."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.documents import VISIBILITIES, parse_pairs
from worker.errors import ConfigError
from worker.users import User, find_user


@dataclass(frozen=True)
class Target:
    """Who owns what this run writes, and how it is shared."""

    owner: User
    team: str | None
    visibility: str
    metadata: dict[str, Any]


def make_target(
    conn: psycopg.Connection[Any],
    *,
    owner: str,
    team: str | None = None,
    visibility: str = "private",
    metadata: Iterable[str] = (),
) -> Target:
    """Resolve the owner and check the sharing options before anything is read.

    `metadata` is `key=value` pairs read as `suparag search --filter` reads them,
    so a filter finds what was tagged.
    """
    if visibility not in VISIBILITIES:
        raise ConfigError(f"visibility {visibility!r}: use one of {', '.join(VISIBILITIES)}")
    user = find_user(conn, owner)
    team = team if team is not None else user.team
    if visibility == "team" and not team:
        raise ConfigError(
            f"--visibility team needs a team and {user.email} has none: pass --team, or "
            f"`suparag users add {user.email} --team TEAM`"
        )
    return Target(owner=user, team=team or None, visibility=visibility,
                  metadata=parse_pairs(metadata, option="metadata"))
