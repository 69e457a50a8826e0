"""`/realtime/v1/websocket?vsn=2.0.0`, the serializer supabase-js opens by default, over a
real socket (the `websockets` client) against the in-process API and database: array
frames, binary broadcast pushes served and binary pushes refused with a reply,
postgres_changes on `public.answers` under RLS, and an unserved `vsn` refused with a
reason."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import test_api_realtime
import websockets
from test_api_realtime import ask, run

# The fixtures of test_api_realtime: the API in-process, alice (team a) and bob (team b).
api, users = test_api_realtime.api, test_api_realtime.users

WAIT = 15.0


def answer(conn, question_id: str, content: str) -> str:
    """The answer worker's write, done directly: a finished answer to question_id."""
    row = conn.execute(
        "insert into public.answers (question_id, asker_id, conversation_id, content, mode,"
        " status) select id, asker_id, conversation_id, %s, 'extractive', 'done'"
        " from public.questions where id = %s returning id", (content, question_id)).fetchone()
    conn.commit()
    return str(row["id"])


class Frames:
    """A vsn 2.0.0 socket, read as realtime-js reads it: `[join_ref, ref, topic, event,
    payload]` arrays."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, join_ref: str | None, ref: str | None, topic: str, event: str,
                   payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))

    async def recv(self) -> list[Any]:
        frame = await asyncio.wait_for(self.ws.recv(), WAIT)
        assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
        array = json.loads(frame)
        assert isinstance(array, list) and len(array) == 5, array
        return array

    async def until(self, event: str, test: Any = lambda payload: True) -> list[Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            frame = await self.recv()
            if frame[3] == event and test(frame[4]):
                return frame
        raise AssertionError(f"no {event} in {WAIT} s")


def test_a_signed_in_users_channel_receives_their_answer_and_never_anothers(
        api, conn, users):
    async def main() -> None:
        url = f"{api.ws_url}?apikey={api.keys.anon_key}&vsn=2.0.0"
        async with websockets.connect(url) as ws:
            socket = Frames(ws)
            await socket.send(None, "1", "phoenix", "heartbeat", {})
            assert await socket.recv() == [None, "1", "phoenix", "phx_reply",
                                           {"status": "ok", "response": {}}]
            binding = {"event": "*", "schema": "public", "table": "answers"}
            topic = "realtime:answers-alice"
            # As realtime-js joins: the config, and the signed-in user's token.
            await socket.send("2", "2", topic, "phx_join", {
                "config": {"broadcast": {"ack": False, "self": False},
                           "presence": {"key": "", "enabled": False},
                           "postgres_changes": [binding], "private": False},
                "access_token": api.keys.access_token(users["alice"])})
            join_ref, ref, _, event, reply = await socket.recv()
            assert (join_ref, ref, event, reply["status"]) == ("2", "2", "phx_reply", "ok")
            [bound] = reply["response"]["postgres_changes"]
            assert {k: bound[k] for k in binding} == binding
            assert await socket.recv() == [None, None, topic, "system", {
                "extension": "postgres_changes", "status": "ok",
                "message": "Subscribed to PostgreSQL", "channel": "answers-alice"}]

            # bob's answer commits first: had it been sent, it would arrive first.
            answer(conn, ask(conn, users["bob"], "bob's question"), "bob's answer")
            mine = answer(conn, ask(conn, users["alice"], "alice's question"),
                          "alice's answer")
            frame = await socket.until("postgres_changes")
            assert frame[:3] == [None, None, topic]
            assert frame[4]["ids"] == [bound["id"]]
            data = frame[4]["data"]
            assert (data["type"], data["schema"], data["table"]) == ("INSERT", "public",
                                                                     "answers")
            assert data["record"]["id"] == mine
            assert data["record"]["asker_id"] == str(users["alice"].id)
            assert data["record"]["content"] == "alice's answer"

            # A token refresh keeps the channel; a leave is replied to and closed.
            await socket.send("2", "3", topic, "access_token",
                              {"access_token": api.keys.access_token(users["alice"])})
            await socket.send("2", "4", topic, "phx_leave", {})
            assert await socket.recv() == ["2", "4", topic, "phx_reply",
                                           {"status": "ok", "response": {}}]
            assert await socket.recv() == ["2", "2", topic, "phx_close", {}]

    run(main)


def test_binary_broadcast_pushes_are_broadcasts_and_the_socket_lives_on(api):
    """realtime-js sends `channel.send({type: 'broadcast', ...})` as a binary user-broadcast
    push (kind 3): served as a broadcast (issue 13), acked, and echoed with `self`: a JSON
    payload as a text frame, a binary one as a binary user-broadcast frame (kind 4)."""
    async def main() -> None:
        url = f"{api.ws_url}?apikey={api.keys.anon_key}&vsn=2.0.0"
        async with websockets.connect(url) as ws:
            socket = Frames(ws)
            topic = b"realtime:room"
            # Not joined yet: Phoenix's "unmatched topic".
            await ws.send(bytes([3, 1, 1, len(topic), 2, 0, 1]) + b"15" + topic + b"hi"
                          + b"{}")
            assert (await socket.recv())[4] == {"status": "error",
                                                 "response": {"reason": "unmatched topic"}}
            await socket.send("1", "1", "realtime:room", "phx_join", {"config": {
                "broadcast": {"ack": True, "self": True}, "private": False}})
            assert (await socket.recv())[4]["status"] == "ok"
            user_payload = json.dumps({"text": "hello"}).encode()
            await ws.send(bytes([3, 1, 1, len(topic), 2, 0, 1]) + b"16" + topic + b"hi"
                          + user_payload)
            frames = [await socket.recv(), await socket.recv()]
            assert [None, None, "realtime:room", "broadcast",
                    {"type": "broadcast", "event": "hi", "payload": {"text": "hello"}}] in frames
            assert ["1", "6", "realtime:room", "phx_reply",
                    {"status": "ok", "response": {}}] in frames
            await ws.send(bytes([3, 1, 1, len(topic), 2, 0, 0]) + b"17" + topic + b"hi"
                          + b"\x00\x01")
            echoed = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(2)]
            binary = [f for f in echoed if isinstance(f, bytes)]
            assert binary == [bytes([4, len(topic), 2, 0, 0]) + topic + b"hi" + b"\x00\x01"]
            # A binary push (kind 0) is still refused with a reply.
            await ws.send(bytes([0, 1, 1, len(topic), 4]) + b"18" + topic + b"ping" + b"\x00")
            assert (await socket.recv())[4]["status"] == "error"
            await ws.send(b"\x03\x09")  # truncated: ignored, never a crash
            await socket.send(None, "9", "phoenix", "heartbeat", {})
            assert await socket.recv() == [None, "9", "phoenix", "phx_reply",
                                           {"status": "ok", "response": {}}]

    run(main)


def test_an_unserved_vsn_is_refused_with_the_served_ones(api):
    async def main() -> None:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(f"{api.ws_url}?apikey={api.keys.anon_key}"
                                          f"&vsn=3.0.0"):
                pass
        assert refused.value.response.status_code == 403
        body = json.loads(refused.value.response.body or b"{}")
        assert body["message"] == ("serializer vsn '3.0.0' is not served: connect with "
                                   "vsn=1.0.0 or vsn=2.0.0")

    run(main)
