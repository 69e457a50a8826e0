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
