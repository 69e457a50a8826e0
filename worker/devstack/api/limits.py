"""The local API's limits, in one place (docs/local-api.md, "Limits", lists them), and
the one JSON body reader every route uses.

A request the API cannot serve safely (a body too big or nested too deep, more rows
than `max_rows`) gets a 4xx naming the limit, never a crash or a stalled server.
"""

from __future__ import annotations

import json
import re
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request

#: How deep a JSON body may nest (arrays and objects). Python's parser recurses per
#: level; a body nested thousands deep would raise RecursionError.
MAX_JSON_DEPTH = 64
#: Body sizes, in bytes: `/rest/v1` (bulk inserts), `/auth/v1`, `/functions/v1`.
MAX_REST_BODY = 8 * 1024 * 1024
MAX_AUTH_BODY = 64 * 1024
MAX_FUNCTIONS_BODY = 1024 * 1024
#: Rows one read may return when the project's config.toml sets no `[api] max_rows`
#: (the Supabase CLI's default).
DEFAULT_MAX_ROWS = 1000
#: `/functions/v1/embed`: texts per call, UTF-8 bytes per text and in all.
MAX_EMBED_INPUTS = 256
MAX_EMBED_TEXT_BYTES = 16 * 1024
MAX_EMBED_TOTAL_BYTES = 512 * 1024
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

#: Makes the route's own error (PostgREST or GoTrue shape): (status, message, details).
BodyError = Callable[[int, str, str | None], Exception]

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether raw's arrays and objects nest deeper than limit, found without parsing
    it (so without recursion); brackets inside strings do not count."""
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', raw)):
        if match[0] in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


async def read_json(request: Request, *, max_bytes: int, error: BodyError) -> Any:
    """The request's JSON body (None when empty), or error(...) raised: 413 above
    max_bytes, 400 for invalid JSON or nesting deeper than MAX_JSON_DEPTH."""
    too_big = f"Request body larger than {max_bytes} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise error(413, too_big, f"Content-Length is {declared}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise error(413, too_big, None)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    if too_deep(raw):
        raise error(400, f"JSON body nested deeper than {MAX_JSON_DEPTH} levels",
                    f"send at most {MAX_JSON_DEPTH} levels of arrays and objects")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise error(400, "Could not parse the request body as JSON", str(exc)) from exc


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


class RateLimit:
    """At most `limit` events per key in any `window` seconds (a sliding window)."""

    def __init__(self, limit: int, window: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one event for key; False (and not counted) when key is over the limit."""
        now = self._clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            # Forget keys whose window has passed, so the table stays small.
            for stale in [k for k, v in self._events.items() if v and v[-1] <= now - self.window]:
                del self._events[stale]
            return True
