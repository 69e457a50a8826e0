"""Limits of the edge functions and the local API, and the one JSON body reader.

A request that cannot be served safely (a body too big or nested too deep, too
many texts, a caller over their rate) gets a 4xx naming the limit, never a crash.
The dev API's `worker.devstack.api.limits` imports the shared parts from here.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

#: How deep a JSON body may nest (arrays and objects). Python's parser recurses per
#: level; a body nested thousands deep would raise RecursionError.
MAX_JSON_DEPTH = 64
#: Bytes of a `/functions/v1` request body.
MAX_FUNCTIONS_BODY = 1024 * 1024
#: `/functions/v1/embed`: texts per call, UTF-8 bytes per text and in all.
MAX_EMBED_INPUTS = 256
MAX_EMBED_TEXT_BYTES = 16 * 1024
MAX_EMBED_TOTAL_BYTES = 512 * 1024
#: `/functions/v1/search`: bytes of the query, results per call, metadata filter size.
MAX_QUERY_BYTES = 8 * 1024
MAX_SEARCH_K = 50
MAX_FILTER_KEYS = 16
MAX_FILTER_BYTES = 4 * 1024
#: Requests per caller (a user's `sub`, else role and address) per window, for embed and
#: search; the service_role is not limited. Settable by SUPARAG_EDGE_RATE_LIMIT.
RATE_LIMIT, RATE_WINDOW_SECONDS = 600, 60.0

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


class RateLimit:
    """At most `limit` events per key in any `window` seconds (a sliding window)."""

    def __init__(self, limit: int, window: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self._clock = limit, window, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one event for key; False (and not counted) when key is over the limit."""
        return self.wait(key) == 0

    def wait(self, key: str) -> int:
        """Count one event for key and return 0; or, when key is over the limit, the
        whole seconds until it may send again (for `Retry-After`), not counted."""
        now = self._clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return max(1, math.ceil(events[0] + self.window - now))
            events.append(now)
            # Forget keys whose window has passed, so the table stays small.
            for stale in [k for k, v in self._events.items() if v and v[-1] <= now - self.window]:
                del self._events[stale]
            return 0
