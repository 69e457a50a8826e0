"""The Realtime frame codecs (worker/devstack/api/realtime/protocol.py), against frames
built byte for byte the way realtime-js 2.x builds and reads them
(`packages/core/realtime-js/src/lib/serializer.ts` in supabase/supabase-js)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.devstack.api.realtime import protocol
from worker.devstack.api.realtime.protocol import Message


def js_encode(join_ref: str | None, ref: str | None, topic: str, event: str,
              payload: dict[str, Any]) -> str | bytes:
    """realtime-js Serializer.encode: a user broadcast (event `broadcast` whose payload
    names an event) becomes a kind 3 binary frame; everything else a JSON array."""
    if event != "broadcast" or not isinstance(payload.get("event"), str):
        return json.dumps([join_ref, ref, topic, event, payload])
    user = payload.get("payload")
    encoding, data = (0, user) if isinstance(user, bytes) else \
        (1, json.dumps(user if user is not None else {}).encode())
    fields = [(join_ref or "").encode(), (ref or "").encode(), topic.encode(),
              payload["event"].encode(), b""]  # no allowed metadata keys by default
    return bytes([3, *(len(f) for f in fields), encoding]) + b"".join(fields) + data


def js_decode(frame: str | bytes) -> dict[str, Any]:
    """realtime-js Serializer.decode: JSON arrays, and binary kind 4 user broadcasts."""
    if isinstance(frame, str):
        join_ref, ref, topic, event, payload = json.loads(frame)
        return {"join_ref": join_ref, "ref": ref, "topic": topic, "event": event,
                "payload": payload}
    assert frame[0] == 4, f"realtime-js decodes only kind 4 binary frames, got {frame[0]}"
    topic_size, event_size, meta_size, encoding = frame[1:5]
    at = 5
    topic = frame[at:at + topic_size].decode()
    at += topic_size
    event = frame[at:at + event_size].decode()
    at += event_size
    meta = frame[at:at + meta_size].decode()
    at += meta_size
    rest = frame[at:]
    data: dict[str, Any] = {"type": "broadcast", "event": event,
                            "payload": json.loads(rest) if encoding == 1 else rest}
    if meta_size:
        data["meta"] = json.loads(meta)
    return {"join_ref": None, "ref": None, "topic": topic, "event": "broadcast",
            "payload": data}


V2 = protocol.serializer_for("2.0.0")
V1 = protocol.serializer_for("1.0.0")
TOKEN = "eyJhbGciOiJIUzI1NiJ9.e30.x"
JOIN_PAYLOAD = {
    "config": {"broadcast": {"ack": False, "self": False}, "presence": {"key": "",
                                                                       "enabled": False},
               "postgres_changes": [{"event": "*", "schema": "public", "table": "answers"}],
               "private": False},
    "access_token": TOKEN,
}


def test_vsn_2_is_served_beside_1_and_nothing_else():
    assert V1 is not None and V2 is not None and V1 is not V2
    assert protocol.serializer_for("3.0.0") is None
    assert protocol.SERVED == ("1.0.0", "2.0.0")


@pytest.mark.parametrize(("join_ref", "ref", "topic", "event", "payload"), [
    ("1", "1", "realtime:answers-alice", "phx_join", JOIN_PAYLOAD),
    (None, "2", "phoenix", "heartbeat", {}),
    ("1", "3", "realtime:answers-alice", "access_token", {"access_token": TOKEN}),
    ("1", "4", "realtime:answers-alice", "phx_leave", {}),
    ("1", "5", "realtime:rüm ☃", "presence", {"type": "presence", "event": "track",
                                              "payload": {"online": True}}),
])
def test_decodes_the_text_frames_realtime_js_sends(join_ref, ref, topic, event, payload):
    assert V2 is not None
    frame = js_encode(join_ref, ref, topic, event, payload)
    assert isinstance(frame, str)
    assert V2.decode(frame) == Message(topic=topic, event=event, payload=payload, ref=ref,
                                       join_ref=join_ref)


def test_decodes_user_broadcast_pushes_json_and_binary():
    assert V2 is not None
    # Multi-byte topic and event: the sizes are UTF-8 byte counts.
    json_push = js_encode("1", "6", "realtime:café", "broadcast",
                          {"type": "broadcast", "event": "crème", "payload": {"n": 1}})
    assert isinstance(json_push, bytes) and json_push[0] == 3
    assert V2.decode(json_push) == Message(
        topic="realtime:café", event="broadcast", ref="6", join_ref="1",
        payload={"type": "broadcast", "event": "crème", "payload": {"n": 1}})
    binary_push = js_encode("1", "7", "realtime:room", "broadcast",
                            {"type": "broadcast", "event": "blob", "payload": b"\x00\xff"})
    decoded = V2.decode(binary_push)
    assert decoded.payload == {"type": "broadcast", "event": "blob", "payload": b"\x00\xff"}
    with_meta = bytes([3, 1, 1, 4, 1, 10, 1]) + b"18room" + b"e" + b'{"id":"x"}' + b"{}"
    assert V2.decode(with_meta).payload["meta"] == {"id": "x"}


def test_decodes_binary_pushes_keeping_their_bytes():
    assert V2 is not None
    frame = bytes([0, 1, 1, 4, 4]) + b"19room" + b"ping" + b"\x01\x02"
    assert V2.decode(frame) == Message(topic="room", event="ping", ref="9", join_ref="1",
                                       binary=b"\x01\x02")


@pytest.mark.parametrize("frame", [
    b"", bytes([3, 5, 0, 0, 0, 0, 1]) + b"ab",  # field sizes past the end
    bytes([1, 0, 0, 0, 0]), bytes([4, 0, 0, 0, 1]),  # kinds only the server sends
    bytes([9]), bytes([3, 0, 0, 1, 1, 0, 1]) + b"te" + b"not json",
    bytes([0, 0, 0, 2, 1]) + b"\xff\xfe" + b"e",  # not UTF-8
    "not json", '{"topic": "phoenix"}', '["1", "2", "phoenix"]',
    '[null, "1", "phoenix", "heartbeat", [1, 2]]', '[null, "1", 7, "heartbeat", {}]',
])
def test_malformed_frames_are_value_errors_never_crashes(frame):
    assert V2 is not None
    with pytest.raises(ValueError):
        V2.decode(frame)


def test_encodes_what_the_server_sends_the_way_realtime_js_reads_it():
    assert V2 is not None
    reply = Message(topic="realtime:answers-alice", event="phx_reply", ref="1", join_ref="1",
                    payload={"status": "ok", "response": {"postgres_changes": [
                        {"event": "*", "schema": "public", "table": "answers", "id": 42}]}})
    system = Message(topic="realtime:answers-alice", event="system", payload={
        "extension": "postgres_changes", "status": "ok",
        "message": "Subscribed to PostgreSQL", "channel": "answers-alice"})
    change = Message(topic="realtime:answers-alice", event="postgres_changes", payload={
        "ids": [42], "data": {"schema": "public", "table": "answers", "type": "INSERT",
                              "commit_timestamp": "2026-01-01T00:00:00Z", "errors": None,
                              "columns": [{"name": "id", "type": "uuid"}],
                              "record": {"id": "a"}}})
    close = Message(topic="realtime:answers-alice", event="phx_close", ref="1")
    for message in (reply, system, change, close):
        frame = V2.encode(message)
        assert isinstance(frame, str)  # everything the hub sends is a text frame
        assert js_decode(frame) == {"join_ref": message.join_ref, "ref": message.ref,
                                    "topic": message.topic, "event": message.event,
                                    "payload": dict(message.payload)}
        assert V2.decode(frame) == message


def test_binary_user_broadcasts_encode_as_kind_4():
    assert V2 is not None
    message = Message(topic="realtime:café", event="broadcast", payload={
        "type": "broadcast", "event": "blob", "payload": b"\x00\x01", "meta": {"id": "m"}})
    frame = V2.encode(message)
    assert isinstance(frame, bytes)
    assert js_decode(frame) == {"join_ref": None, "ref": None, "topic": "realtime:café",
                                "event": "broadcast", "payload": dict(message.payload)}
    with pytest.raises(ValueError, match="255"):
        V2.encode(Message(topic="x" * 256, event="broadcast",
                          payload={"event": "e", "payload": b""}))


def test_vsn_1_keeps_its_objects_and_has_no_binary_frames():
    assert V1 is not None
    message = Message(topic="phoenix", event="phx_reply", ref="7",
                      payload={"status": "ok", "response": {}})
    assert json.loads(V1.encode(message)) == {"topic": "phoenix", "event": "phx_reply",
                                              "ref": "7", "join_ref": None,
                                              "payload": {"status": "ok", "response": {}}}
    assert V1.decode(V1.encode(message)) == message
    for frame in (b"\x00", "[null, null, \"phoenix\", \"heartbeat\", {}]"):
        with pytest.raises(ValueError):
            V1.decode(frame)
