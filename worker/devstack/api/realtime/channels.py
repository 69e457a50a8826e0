"""A connected websocket and the channels joined on it: the state that the hub
changes (join, leave, token refresh) and the dispatcher reads (who wants what, as
whom) and sends through."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.devstack.api.realtime.bindings import Binding
from worker.devstack.api.realtime.protocol import Message, Serializer


@dataclass
class Channel:
    """A joined `realtime:<name>` topic on one socket."""

    topic: str
    join_ref: str | None
    claims: dict[str, Any]
    bindings: list[Binding]
    socket: Socket
    #: Joined with `config.private`: receives only private broadcasts, and only
    #: because the policies on realtime.messages let its user read the topic.
    private: bool = False
    #: `config.broadcast.self`: the sender's own broadcasts come back to it.
    self_broadcast: bool = False
    #: `config.broadcast.ack`: each broadcast push gets a reply.
    ack_broadcast: bool = False
    #: May this channel's user send on the private topic? Checked on the first send
    #: and again after a token refresh (None: not checked yet).
    can_write: bool | None = None

    @property
    def name(self) -> str:
        """The topic without `realtime:`, as realtime.topic() and realtime.messages hold it."""
        return self.topic.removeprefix("realtime:")


@dataclass(eq=False)
class Socket:
    """One websocket: its serializer, its outgoing queue (fed from any thread) and its
    channels."""

    loop: asyncio.AbstractEventLoop
    serializer: Serializer
    outbox: asyncio.Queue[str | bytes | None] = field(default_factory=asyncio.Queue)
    channels: dict[str, Channel] = field(default_factory=dict)

    def send(self, topic: str, event: str, payload: Mapping[str, Any], *,
             ref: str | None = None, join_ref: str | None = None) -> None:
        """Queue a frame; safe from the dispatcher thread."""
        frame = self.serializer.encode(Message(topic=topic, event=event, payload=payload,
                                               ref=ref, join_ref=join_ref))
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to send to
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, frame)


class Stats:
    """What the server did, for `GET /realtime/v1/metrics`: statements run as subscribers
    to authorize (by path), and messages sent (by kind). Safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.authorization_queries: Counter[str] = Counter()
        self.messages_sent: Counter[str] = Counter()

    def queried(self, path: str, n: int = 1) -> None:
        with self._lock:
            self.authorization_queries[path] += n

    def sent(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.messages_sent[kind] += n

    def prometheus(self) -> str:
        """The counters in Prometheus' text format."""
        with self._lock:
            lines = ["# HELP suparag_realtime_authorization_queries_total Statements run as "
                     "a subscriber to decide what it may receive or send.",
                     "# TYPE suparag_realtime_authorization_queries_total counter"]
            lines += [f'suparag_realtime_authorization_queries_total{{path="{k}"}} '
                      f"{self.authorization_queries[k]}"
                      for k in ("postgres_changes", "broadcast")]
            lines += ["# HELP suparag_realtime_messages_sent_total Messages sent to channels.",
                      "# TYPE suparag_realtime_messages_sent_total counter"]
            lines += [f'suparag_realtime_messages_sent_total{{kind="{k}"}} '
                      f"{self.messages_sent[k]}" for k in ("postgres_changes", "broadcast")]
        return "\n".join(lines) + "\n"
