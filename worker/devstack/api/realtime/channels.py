"""A connected websocket and the channels joined on it: the state that the hub
changes (join, leave, token refresh) and the dispatcher reads (who wants what, as
whom) and sends through."""

from __future__ import annotations

import asyncio
import contextlib
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
