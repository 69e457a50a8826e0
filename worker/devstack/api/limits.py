"""The local API's limits, in one place (docs/local-api.md, "Limits", lists them), and
the one JSON body reader every route uses.

A request the API cannot serve safely (a body too big or nested too deep, more rows
than `max_rows`) gets a 4xx naming the limit, never a crash or a stalled server.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

# The body reader (read_json), the rate limit and the `/functions/v1` caps are the edge
# functions' (worker/edge/limits.py): production and this API share them.
from worker.edge.limits import (
    MAX_EMBED_INPUTS,
    MAX_EMBED_TEXT_BYTES,
    MAX_EMBED_TOTAL_BYTES,
    MAX_FUNCTIONS_BODY,
    MAX_JSON_DEPTH,
    RateLimit,
    read_json,
    too_deep,
)

__all__ = [
    "DEFAULT_MAX_ROWS",
    "MAX_AUTH_BODY",
    "MAX_EMAIL_LENGTH",
    "MAX_EMBED_INPUTS",
    "MAX_EMBED_TEXT_BYTES",
    "MAX_EMBED_TOTAL_BYTES",
    "MAX_FUNCTIONS_BODY",
    "MAX_JSON_DEPTH",
    "MAX_REST_BODY",
    "POOL_ACQUIRE_TIMEOUT",
    "POOL_RETRY_AFTER",
    "POOL_SIZE",
    "SIGN_IN_LIMIT",
    "SIGN_IN_WINDOW_SECONDS",
    "RateLimit",
    "max_rows",
    "read_json",
    "too_deep",
]

#: Body sizes, in bytes: `/rest/v1` (bulk inserts), `/auth/v1`.
MAX_REST_BODY = 8 * 1024 * 1024
MAX_AUTH_BODY = 64 * 1024
#: Rows one read may return when the project's config.toml sets no `[api] max_rows`
#: (the Supabase CLI's default).
DEFAULT_MAX_ROWS = 1000
#: Characters in an email address (GoTrue's limit).
MAX_EMAIL_LENGTH = 255
#: Sign-ups and password sign-ins per client address: Supabase Auth's default of 30
#: per 5 minutes, so a password cannot be guessed at the speed of a loop.
SIGN_IN_LIMIT, SIGN_IN_WINDOW_SECONDS = 30, 300.0

#: Connections in the API's pool, and how long a request waits for one before it is
#: answered 503 with `Retry-After` (PostgREST's PGRST003) instead of queuing behind slow
#: requests: each of those is bounded by its role's statement_timeout (anon 3 s,
#: authenticated 8 s), so a fast request would otherwise wait out the slowest.
POOL_SIZE = 8
POOL_ACQUIRE_TIMEOUT = 1.0
#: Seconds a client is told to wait (`Retry-After`) after a pool timeout.
POOL_RETRY_AFTER = 1


def max_rows(start: Path | None = None) -> int:
    """`[api] max_rows` of the Supabase project at or above start (the working
    directory), as PostgREST reads it; DEFAULT_MAX_ROWS when there is none."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        config = folder / "supabase" / "config.toml"
        if config.is_file():
            try:
                value = tomllib.loads(config.read_text()).get("api", {}).get("max_rows")
            except (OSError, tomllib.TOMLDecodeError, AttributeError):
                return DEFAULT_MAX_ROWS
            return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_ROWS
    return DEFAULT_MAX_ROWS
