"""Phoenix frames: the wire encoding of Realtime messages, one codec per serializer
version.

The client names its serializer with the socket's `vsn` query parameter, and
`serializer_for` is the one place that picks the codec; everything above it deals
in `Message`s. Served, as Supabase Realtime serves them:

- vsn 1.0.0: each text frame a JSON object `{"topic", "event", "payload", "ref",
  "join_ref"}`. supabase-py speaks it; so does a socket that names no `vsn`.
- vsn 2.0.0 (what supabase-js / realtime-js open by default): each text frame a
  JSON array `[join_ref, ref, topic, event, payload]`, plus binary frames. A binary
  frame starts with a kind byte, then one length byte per field, then the fields
  (UTF-8) and the payload:

  ====================  ===================================================  ======
  kind                  layout after the kind byte                            sent by
  ====================  ===================================================  ======
  0 push                join_ref, ref, topic, event sizes; fields; data       client
  3 user broadcast      join_ref, ref, topic, user event, metadata sizes;     client
  push                  payload encoding (0 binary, 1 JSON); fields; payload
  4 user broadcast      topic, user event, metadata sizes; payload            server
                        encoding; fields; payload
  ====================  ===================================================  ======

  (Kinds 1 and 2, binary replies and broadcasts, carry binary payloads that this
  server never produces, and realtime-js decodes only kind 4.)

A user broadcast decodes to the message realtime-js itself makes of one: event
`broadcast`, payload `{"type": "broadcast", "event", "payload", "meta"?}`, where
`payload` is the JSON value or, for binary encoding, the bytes. A kind 0 push keeps
its bytes in `Message.binary`. No event here serves either; the hub refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The serializer a socket without `vsn` gets (Phoenix's default).
DEFAULT_VSN = "1.0.0"

BROADCAST = "broadcast"

# Binary frame kinds (realtime's RealtimeWeb.Socket.V2Serializer).
PUSH, USER_BROADCAST_PUSH, USER_BROADCAST = 0, 3, 4
BINARY_ENCODING, JSON_ENCODING = 0, 1  # upstream reads any non-zero as JSON


@dataclass(frozen=True)
class Message:
    """One Phoenix message, whatever its encoding."""

    topic: str
    event: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    ref: str | None = None
    join_ref: str | None = None
    #: The raw payload of a binary push (vsn 2.0.0, kind 0); `payload` is then empty.
    binary: bytes | None = None


class Serializer(Protocol):
    """Encodes and decodes the frames of one serializer version."""

    def encode(self, message: Message) -> str | bytes:
        """A text frame (str) or a binary frame (bytes)."""
        ...

    def decode(self, frame: str | bytes) -> Message:
        """The message of a text or binary frame, or ValueError if it is not one."""
        ...


class MalformedFrame(ValueError):
    """A frame that is not a well-formed message, but says enough (its fields as sent, in
    `message`) for the hub to answer it with an error reply instead of silence."""

    def __init__(self, reason: str, message: Message) -> None:
        super().__init__(reason)
        self.message = message


def _message(topic: Any, event: Any, payload: Any, ref: Any, join_ref: Any) -> Message:
    """A Message from decoded JSON fields, or MalformedFrame if they cannot be one."""
    if payload is None:
        payload = {}
    # As sent, for the error reply: the hub checks each field's type again.
    sent = Message(topic=topic, event=event, payload=payload, ref=ref, join_ref=join_ref)
    if not isinstance(topic, str) or not isinstance(event, str):
        raise MalformedFrame("topic and event must be strings", sent)
    if not isinstance(payload, Mapping):
        raise MalformedFrame(
            f"the payload must be a JSON object, not {type(payload).__name__}", sent)
    return sent


def _json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc


class JsonObjects:
    """vsn 1.0.0: each frame a JSON object with the message's five fields."""

    def encode(self, message: Message) -> str:
        if message.binary is not None:
            raise ValueError("vsn 1.0.0 has no binary payloads")
        return json.dumps({"topic": message.topic, "event": message.event,
                           "payload": message.payload, "ref": message.ref,
                           "join_ref": message.join_ref}, default=str)

    def decode(self, frame: str | bytes) -> Message:
        if isinstance(frame, bytes):
            raise ValueError("vsn 1.0.0 has no binary frames")
        obj = _json(frame)
        if not isinstance(obj, dict) or "topic" not in obj or "event" not in obj:
            raise ValueError("not a Phoenix message: expected an object with topic and event")
        return _message(obj["topic"], obj["event"], obj.get("payload"), obj.get("ref"),
                        obj.get("join_ref"))


class _Reader:
    """Reads a binary frame field by field; ValueError when it runs short."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def sizes(self, n: int) -> list[int]:
        if self.at + n > len(self.data):
            raise ValueError("binary frame shorter than its header")
        sizes = list(self.data[self.at:self.at + n])
        self.at += n
        return sizes

    def text(self, size: int) -> str:
        return self.chunk(size).decode()  # UnicodeDecodeError is a ValueError

    def chunk(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise ValueError("binary frame shorter than its field sizes say")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def rest(self) -> bytes:
        return self.data[self.at:]


def _field(value: str, name: str) -> bytes:
    encoded = value.encode()
    if len(encoded) > 255:
        raise ValueError(f"{name} is {len(encoded)} bytes; binary frames allow 255")
    return encoded


class JsonArrays:
    """vsn 2.0.0: text frames `[join_ref, ref, topic, event, payload]`, and the binary
    frames of the module docstring."""

    def encode(self, message: Message) -> str | bytes:
        if message.binary is not None:
            raise ValueError("this server sends no binary pushes (realtime-js cannot "
                             "decode them)")
        inner = message.payload.get("payload")
        if message.event == BROADCAST and isinstance(inner, bytes | bytearray):
            return self._user_broadcast(message, bytes(inner))
        return json.dumps([message.join_ref, message.ref, message.topic, message.event,
                           message.payload], default=str)

    @staticmethod
    def _user_broadcast(message: Message, data: bytes) -> bytes:
        """Kind 4: a broadcast whose user payload is bytes (JSON payloads go as text)."""
        topic = _field(message.topic, "topic")
        event = _field(str(message.payload.get("event", "")), "user event")
        meta = message.payload.get("meta")
        metadata = _field(json.dumps(meta) if meta else "", "metadata")
        header = bytes([USER_BROADCAST, len(topic), len(event), len(metadata),
                        BINARY_ENCODING])
        return header + topic + event + metadata + data

    def decode(self, frame: str | bytes) -> Message:
        if isinstance(frame, bytes):
            return self._decode_binary(frame)
        array = _json(frame)
        # Upstream takes the first five elements of a longer array too.
        if not isinstance(array, list) or len(array) < 5:
            raise ValueError("not a Phoenix message: expected "
                             "[join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = array[:5]
        return _message(topic, event, payload, ref, join_ref)

    @staticmethod
    def _decode_binary(frame: bytes) -> Message:
        read = _Reader(frame)
        [kind] = read.sizes(1)
        if kind == PUSH:
            join_ref_size, ref_size, topic_size, event_size = read.sizes(4)
            join_ref, ref = read.text(join_ref_size), read.text(ref_size)
            topic, event = read.text(topic_size), read.text(event_size)
            return Message(topic=topic, event=event, ref=ref or None,
                           join_ref=join_ref or None, binary=read.rest())
        if kind == USER_BROADCAST_PUSH:
            join_ref_size, ref_size, topic_size, event_size, meta_size, encoding = \
                read.sizes(6)
            join_ref, ref = read.text(join_ref_size), read.text(ref_size)
            topic, user_event = read.text(topic_size), read.text(event_size)
            metadata = read.chunk(meta_size)
            data = read.rest()
            payload: dict[str, Any] = {"type": BROADCAST, "event": user_event,
                                       "payload": data if encoding == BINARY_ENCODING
                                       else _json(data)}
            if metadata:
                payload["meta"] = _json(metadata)
            return Message(topic=topic, event=BROADCAST, payload=payload, ref=ref or None,
                           join_ref=join_ref or None)
        raise ValueError(f"binary frame kind {kind} is not one a client sends (0 or 3)")


_SERIALIZERS: dict[str, Serializer] = {"1.0.0": JsonObjects(), "2.0.0": JsonArrays()}

#: The versions served, for the refusal of any other.
SERVED = tuple(_SERIALIZERS)


def serializer_for(vsn: str) -> Serializer | None:
    """The codec of serializer version vsn, or None if it is not served."""
    return _SERIALIZERS.get(vsn)
