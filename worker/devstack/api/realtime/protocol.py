"""Phoenix frames: the wire encoding of Realtime messages, one codec per serializer
version.

The client names its serializer with the socket's `vsn` query parameter, and
`serializer_for` is the one place that picks the codec; everything above it deals
in `Message`s. Served: vsn 1.0.0, JSON objects
`{"topic", "event", "payload", "ref", "join_ref"}`, what the Supabase clients send
by default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

#: The serializer a socket without `vsn` gets (Phoenix's default).
DEFAULT_VSN = "1.0.0"


@dataclass(frozen=True)
class Message:
    """One Phoenix message, whatever its encoding."""

    topic: str
    event: str
    payload: Mapping[str, Any]
    ref: str | None = None
    join_ref: str | None = None


class Serializer(Protocol):
    """Encodes and decodes the text frames of one serializer version."""

    def encode(self, message: Message) -> str: ...

    def decode(self, text: str) -> Message:
        """The message of a text frame, or ValueError if it is not one."""
        ...


class JsonObjects:
    """vsn 1.0.0: each frame a JSON object with the message's five fields."""

    def encode(self, message: Message) -> str:
        return json.dumps({"topic": message.topic, "event": message.event,
                           "payload": message.payload, "ref": message.ref,
                           "join_ref": message.join_ref}, default=str)

    def decode(self, text: str) -> Message:
        try:
            frame = json.loads(text)
            return Message(topic=str(frame["topic"]), event=str(frame["event"]),
                           payload=frame.get("payload") or {}, ref=frame.get("ref"),
                           join_ref=frame.get("join_ref"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a Phoenix message: {exc}") from exc


_SERIALIZERS: dict[str, Serializer] = {"1.0.0": JsonObjects()}


def serializer_for(vsn: str) -> Serializer | None:
    """The codec of serializer version vsn, or None if it is not served."""
    return _SERIALIZERS.get(vsn)
