"""Malformed Realtime frames (issue 14): each gets an error reply and the socket stays open,
so a valid join on the same socket still works; the per-socket channel limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from test_api_realtime import Api, run, serve

from worker.devstack.api.keys import load_or_create
from worker.devstack.api.realtime.channels import Socket
from worker.devstack.api.realtime.hub import MAX_CHANNELS_PER_SOCKET, RealtimeHub
from worker.devstack.api.realtime.protocol import JsonObjects, Message

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets")

WAIT = 15.0


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from serve(db_url, tmp_path / "home")


async def push(ws: Any, frame: Any) -> dict[str, Any]:
    """Send one frame and return the reply to it (matched on its ref)."""
    await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
    ref = frame.get("ref") if isinstance(frame, dict) else None
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        if reply["event"] == "phx_reply" and reply["ref"] == ref:
            return reply


def join(topic: str, ref: str, payload: Any) -> dict[str, Any]:
    return {"topic": topic, "event": "phx_join", "ref": ref, "join_ref": ref,
            "payload": payload}


BINDING = {"event": "INSERT", "schema": "public", "table": "questions"}

#: (what is wrong, the frame, the start of the error reason)
BAD_FRAMES = [
    ("join payload is a string", join("realtime:a", "1", "not an object"),
     "InvalidJoinPayload: the join payload must be an object"),
    ("join config is a list", join("realtime:a", "1", {"config": [BINDING]}),
     "InvalidJoinPayload: config must be an object"),
    ("postgres_changes is an object",
     join("realtime:a", "1", {"config": {"postgres_changes": BINDING}}),
     "InvalidJoinPayload: config.postgres_changes must be a list of objects"),
    ("postgres_changes is a number",
     join("realtime:a", "1", {"config": {"postgres_changes": 5}}),
     "InvalidJoinPayload: config.postgres_changes must be a list of objects"),
    ("postgres_changes holds a string",
     join("realtime:a", "1", {"config": {"postgres_changes": ["INSERT", BINDING]}}),
     "InvalidJoinPayload: config.postgres_changes must be a list of objects"),
    ("access_token payload is a list",
     {"topic": "realtime:a", "event": "access_token", "ref": "1", "payload": ["jwt"]},
     "MalformedJWT: the access_token payload must be"),
    ("access_token is a number",
     {"topic": "realtime:a", "event": "access_token", "ref": "1",
      "payload": {"access_token": 42}},
     "MalformedJWT: the access_token payload must be"),
]


@pytest.mark.parametrize(("case", "frame", "reason"), BAD_FRAMES,
                         ids=[case for case, _, _ in BAD_FRAMES])
def test_a_malformed_frame_gets_an_error_reply_and_the_socket_lives_on(api, case, frame,
                                                                        reason):
    async def main() -> None:
        async with websockets.connect(f"{api.ws_url}?apikey={api.keys.anon_key}&vsn=1.0.0"
                                      ) as ws:
            # A channel joined first: the bad frame must not take it down either.
            assert (await push(ws, join("realtime:a", "0", {})))["payload"]["status"] == "ok"
            reply = await push(ws, frame)
            assert reply["payload"]["status"] == "error", reply
            assert reply["payload"]["response"]["reason"].startswith(reason), reply
            good = await push(ws, join("realtime:b", "2", {"config": {
                "postgres_changes": [BINDING]}}))
            assert good["payload"]["status"] == "ok"
            [bound] = good["payload"]["response"]["postgres_changes"]
            assert bound["table"] == "questions" and bound["id"] > 0

    run(main)


def test_frames_that_are_not_messages_leave_the_socket_open(api):
    async def main() -> None:
        async with websockets.connect(f"{api.ws_url}?apikey={api.keys.anon_key}&vsn=1.0.0"
                                      ) as ws:
            # Nested past Python's recursion limit: the decoder's RecursionError.
            await ws.send("[" * 100_000)
            await ws.send(json.dumps({"topic": "phoenix"}))
            reply = await push(ws, {"topic": "phoenix", "event": "heartbeat", "payload": {},
                                    "ref": "hb"})
            assert reply["payload"] == {"status": "ok", "response": {}}

    run(main)


def test_the_channel_limit_per_socket(api):
    async def main() -> None:
        async with websockets.connect(f"{api.ws_url}?apikey={api.keys.anon_key}&vsn=1.0.0"
                                      ) as ws:
            for n in range(MAX_CHANNELS_PER_SOCKET):
                reply = await push(ws, join(f"realtime:c{n}", str(n), {}))
                assert reply["payload"]["status"] == "ok", reply
            over = await push(ws, join("realtime:one-too-many", "over", {}))
            assert over["payload"] == {"status": "error", "response": {
                "reason": "ChannelRateLimitReached: Too many channels"}}
            # Joining a topic already held again is no new channel; leaving frees a place.
            again = await push(ws, join("realtime:c0", "again", {}))
            assert again["payload"]["status"] == "ok"
            await push(ws, {"topic": "realtime:c1", "event": "phx_leave", "payload": {},
                            "ref": "leave", "join_ref": "1"})
            room = await push(ws, join("realtime:one-too-many", "room", {}))
            assert room["payload"]["status"] == "ok"

    run(main)


@pytest.mark.parametrize(("topic", "event"), [(5, "phx_join"), ("realtime:a", None),
                                              (["realtime:a"], "access_token")])
def test_a_topic_or_event_that_is_not_a_string_gets_an_error_reply(db_url, tmp_path, topic,
                                                                   event):
    # The 1.0.0 codec turns both into strings, but the hub takes what any codec decodes
    # (2.0.0's arrays carry them as they come): a non-string must not raise in the hub.
    keys = load_or_create(tmp_path / "home")
    hub = RealtimeHub(db_url, keys)

    async def main() -> None:
        socket = Socket(loop=asyncio.get_running_loop(), serializer=JsonObjects())
        message = Message(topic=topic, event=event, payload={}, ref="1")  # type: ignore[arg-type]
        await hub._handle(socket, keys.anon_key, message)
        reply = json.loads(await asyncio.wait_for(socket.outbox.get(), WAIT) or "null")
        assert (reply["event"], reply["ref"], reply["payload"]) == ("phx_reply", "1", {
            "status": "error",
            "response": {"reason": "InvalidMessage: topic and event must be strings"}})

    run(main)
