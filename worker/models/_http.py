"""What the two OpenAI-compatible providers (embeddings and chat) share.

The client they build, the server's name as it may appear in messages, the
server's own error message, and the wait a throttled answer asks for.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from worker.errors import ConfigError

if TYPE_CHECKING:
    import openai


def openai_client(*, api_key: str, base_url: str, timeout_seconds: float,
                  needed_by: str) -> openai.OpenAI:
    """An openai client that never retries; needed_by names who asked, for the install hint.

    Retries are not the client's: the embedder makes its own (so they behave
    the same in every client version and the final error can say how many
    were made), and a failed answer is retried by the job queue, with backoff.
    """
    try:
        import openai
    except ImportError as exc:
        raise ConfigError(f"{needed_by} needs the openai package: `pip install openai`") from exc
    return openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                         timeout=timeout_seconds)


def display_url(url: str) -> str:
    """url without credentials, query or trailing slash: safe to put in messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def server_detail(exc: openai.APIStatusError) -> str:
    """The server's own error message, on one short line."""
    body = exc.body
    detail = body.get("message") if isinstance(body, dict) else body
    text = " ".join(str(detail or exc.message).split())
    return text[:300]


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for: `retry-after-ms`, or `Retry-After` (seconds or a date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
