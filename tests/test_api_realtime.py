"""`/realtime/v1/websocket` through the official async realtime client, against a real
server and database: RLS decides who receives what, filters, tokens, heartbeats."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import running_app
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from worker.devstack.api.app import create_app
from worker.devstack.api.keys import ProjectKeys, load_or_create
from worker.devstack.api.realtime.hub import realtime_routes
from worker.users import User, add_user

# The realtime client itself reads deprecated websockets attributes when a socket closes.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets")

WAIT = 15.0


@dataclass
class Api:
    url: str
    keys: ProjectKeys

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/realtime/v1/websocket"


def serve(db_url: str, home: Path, *, port: int | None = None) -> Iterator[Api]:
    """The API with the Realtime route, in-process on a free port, until the test ends."""
    keys = load_or_create(home)
    app = create_app(db_url, keys, routes=realtime_routes(db_url, keys))
    with running_app(app, port=port) as url:
        yield Api(url=url, keys=keys)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from serve(db_url, tmp_path / "home")


def make_users(conn) -> dict[str, User]:
    """alice (team a) and bob (team b), committed."""
    made = {"alice": add_user(conn, "alice@example.com", team="a"),
            "bob": add_user(conn, "bob@example.com", team="b")}
    conn.commit()
    return made


@pytest.fixture
def users(conn) -> dict[str, User]:
    return make_users(conn)


class Inbox:
    """Events a channel callback received, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, payload: Any) -> None:
        self.events.append(payload["data"])

    async def wait_for(self, test: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for event in self.events:
                if test(event):
                    return event
            await asyncio.sleep(0.05)
        raise AssertionError(f"no matching event in {WAIT} s; got {self.events}")


async def subscribe(api: Api, token: str | None, bindings: list[dict[str, Any]],
                    *, topic: str = "questions") -> tuple[AsyncRealtimeClient, Inbox, list[Any]]:
    """A realtime client as supabase-py makes one (anon key in the URL, the user's token
    set with set_auth), subscribed to bindings; returns it, its inbox and its states."""
    client = AsyncRealtimeClient(f"{api.url}/realtime/v1", token=api.keys.anon_key,
                                 auto_reconnect=False)
    if token is not None:
        await client.set_auth(token)
    inbox = Inbox()
    states: list[Any] = []
    channel = client.channel(topic)
    for binding in bindings:
        channel.on_postgres_changes(callback=inbox, **binding)
    await channel.subscribe(lambda state, error: states.append((state, error)))
    return client, inbox, states


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def ask(conn, user: User, question: str, *, match_count: int = 5) -> str:
    row = conn.execute("insert into public.questions (asker_id, question, match_count)"
                       " values (%s, %s, %s) returning id",
                       (user.id, question, match_count)).fetchone()
    conn.commit()
    return str(row["id"])


def test_inserts_and_updates_reach_only_subscribers_who_may_read_the_row(api, conn, users):
    async def main() -> None:
        alice_token = api.keys.access_token(users["alice"])
        client, inbox, states = await subscribe(
            api, alice_token, [{"event": "*", "table": "questions", "schema": "public"}])
        assert states == [(RealtimeSubscribeStates.SUBSCRIBED, None)]
        # bob's row first: events are delivered in commit order, so once alice's
        # arrives, bob's would have arrived before it if it were ever sent.
        ask(conn, users["bob"], "what does bob's team own?")
        mine = ask(conn, users["alice"], "what does alice's team own?")
        event = await inbox.wait_for(lambda e: e["record"]["id"] == mine)
        assert event["type"] == "INSERT" and event["schema"] == "public"
        assert event["table"] == "questions"
        assert event["record"]["question"] == "what does alice's team own?"
        assert event["record"]["asker_id"] == str(users["alice"].id)
        assert event["errors"] is None
        assert {"name": "id", "type": "uuid"} in event["columns"]
        assert event["commit_timestamp"].endswith("Z")
        assert [e["record"]["asker_id"] for e in inbox.events] == [str(users["alice"].id)]

        conn.execute("update public.questions set match_count = 9 where asker_id = %s",
                     (users["bob"].id,))
        conn.execute("update public.questions set match_count = 7 where id = %s", (mine,))
        conn.commit()
        update = await inbox.wait_for(lambda e: e["type"] == "UPDATE")
        assert update["record"]["match_count"] == 7
        assert update["old_record"] == {}  # default replica identity, key unchanged
        assert [e["type"] for e in inbox.events] == ["INSERT", "UPDATE"]
        await client.close()

    run(main)


def test_anon_receives_nothing_from_a_table_it_may_not_read(api, conn, users):
    async def main() -> None:
        anon, anon_inbox, _ = await subscribe(api, None, [{"event": "INSERT",
                                                           "table": "questions"}])
        alice, alice_inbox, _ = await subscribe(
            api, api.keys.access_token(users["alice"]), [{"event": "INSERT",
                                                          "table": "questions"}])
        mine = ask(conn, users["alice"], "is anyone listening?")
        await alice_inbox.wait_for(lambda e: e["record"]["id"] == mine)
        # A second change after it proves the first was dispatched to everyone.
        later = ask(conn, users["alice"], "still?")
        await alice_inbox.wait_for(lambda e: e["record"]["id"] == later)
        assert anon_inbox.events == []
        await anon.close()
        await alice.close()

    run(main)


def test_filters_compare_in_the_column_type(api, conn, users):
    async def main() -> None:
        token = api.keys.access_token(users["alice"])
        client, inbox, states = await subscribe(api, token, [
            {"event": "INSERT", "table": "questions", "filter": "match_count=gte.10"},
            {"event": "INSERT", "table": "questions", "filter": "question=in.(red,blue)"},
        ])
        assert states[0][0] == RealtimeSubscribeStates.SUBSCRIBED
        ask(conn, users["alice"], "small", match_count=9)   # 9 < 10 numerically ("9" > "10")
        ask(conn, users["alice"], "green", match_count=2)
        big = ask(conn, users["alice"], "big", match_count=12)
        blue = ask(conn, users["alice"], "blue", match_count=1)
        await inbox.wait_for(lambda e: e["record"]["id"] == blue)
        assert [e["record"]["id"] for e in inbox.events] == [big, blue]
        await client.close()

    run(main)


def test_large_rows_are_delivered_whole(api, conn, users):
    async def main() -> None:
        client, inbox, _ = await subscribe(api, api.keys.access_token(users["alice"]),
                                           [{"event": "INSERT", "table": "questions"}])
        text = "why " * 50_000  # far past NOTIFY's 8000-byte payload limit
        mine = ask(conn, users["alice"], text)
        event = await inbox.wait_for(lambda e: e["record"]["id"] == mine)
        assert event["record"]["question"] == text
        await client.close()

    run(main)


def test_deletes_carry_only_the_key_as_upstream(api, conn, users):
    async def main() -> None:
        bobs = ask(conn, users["bob"], "bob's secret question")
        client, inbox, _ = await subscribe(api, api.keys.access_token(users["alice"]),
                                           [{"event": "DELETE", "table": "questions"}])
        conn.execute("delete from public.questions where id = %s", (bobs,))
        conn.commit()
        # RLS cannot be checked on a row that is gone: like Supabase, the delete is
        # sent, with the primary key only (questions has RLS).
        event = await inbox.wait_for(lambda e: e["type"] == "DELETE")
        assert event["old_record"] == {"id": bobs}
        assert "record" not in event or not event["record"]
        await client.close()

    run(main)


def test_bad_tokens_are_refused(api, users):
    async def main() -> None:
        forged = ProjectKeys(jwt_secret="not-the-project-secret-" * 3, anon_key="",
                             service_role_key="")
        cases = {
            "JwtSignatureError": forged.access_token(users["alice"]),
            "InvalidJWTToken: Token has expired": api.keys.access_token(users["alice"],
                                                                        lifetime=-10),
            "MalformedJWT": "not-a-jwt",
        }
        for reason, token in cases.items():
            client, _, states = await subscribe(api, token, [{"event": "*",
                                                              "table": "questions"}])
            [(state, error)] = states
            assert state == RealtimeSubscribeStates.CHANNEL_ERROR
            assert reason in json.loads(str(error))["reason"]
            await client.close()

        # Without a project key the socket itself is refused, as upstream (403); a user's
        # valid token is not a project key either (Supabase's gateway refuses it).
        for key in ("not-a-jwt", api.keys.access_token(users["alice"])):
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with websockets.connect(f"{api.ws_url}?apikey={key}&vsn=1.0.0"):
                    pass
            assert refused.value.response.status_code == 403

    run(main)


def test_heartbeat_join_reply_and_leave_frames(api, users):
    async def main() -> None:
        async with websockets.connect(f"{api.ws_url}?apikey={api.keys.anon_key}&vsn=1.0.0"
                                      ) as ws:
            await ws.send(json.dumps({"topic": "phoenix", "event": "heartbeat",
                                      "payload": {}, "ref": "7"}))
            assert json.loads(await ws.recv()) == {
                "topic": "phoenix", "event": "phx_reply", "ref": "7", "join_ref": None,
                "payload": {"status": "ok", "response": {}}}
            binding = {"event": "UPDATE", "schema": "public", "table": "answers",
                       "filter": "status=eq.done"}
            await ws.send(json.dumps({
                "topic": "realtime:mine", "event": "phx_join", "ref": "8", "join_ref": "8",
                "payload": {"config": {"broadcast": {"self": False}, "private": False,
                                       "postgres_changes": [binding]},
                            "access_token": api.keys.access_token(users["alice"])}}))
            reply = json.loads(await ws.recv())
            assert reply["event"] == "phx_reply" and reply["ref"] == "8"
            assert reply["payload"]["status"] == "ok"
            [bound] = reply["payload"]["response"]["postgres_changes"]
            assert {k: bound[k] for k in binding} == binding and bound["id"] > 0
            system = json.loads(await ws.recv())
            assert system["event"] == "system" and system["ref"] is None
            assert system["payload"] == {"extension": "postgres_changes", "status": "ok",
                                         "message": "Subscribed to PostgreSQL",
                                         "channel": "mine"}
            await ws.send(json.dumps({"topic": "realtime:mine", "event": "phx_leave",
                                      "payload": {}, "ref": "9", "join_ref": "8"}))
            left = json.loads(await ws.recv())
            assert (left["event"], left["ref"], left["payload"]["status"]) == \
                ("phx_reply", "9", "ok")

    run(main)


def test_a_bad_filter_is_reported_as_upstream(api, users):
    async def main() -> None:
        # Upstream accepts the join and reports the bad binding in a system error.
        client, _, states = await subscribe(api, None, [{"event": "*", "table": "questions",
                                                         "filter": "match_count=like.%1%"}])
        deadline = time.monotonic() + WAIT
        while len(states) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert [s for s, _ in states] == [RealtimeSubscribeStates.SUBSCRIBED,
                                          RealtimeSubscribeStates.CHANNEL_ERROR]
        error = json.loads(str(states[1][1]))
        assert error["extension"] == "postgres_changes" and error["status"] == "error"
        assert "operator 'like'" in error["message"]
        await client.close()

    run(main)


def test_access_token_refresh_changes_who_the_checks_run_as(api, conn, users):
    async def main() -> None:
        # Joined as anon: alice's questions are not for anon.
        client, inbox, _ = await subscribe(api, None, [{"event": "INSERT",
                                                        "table": "questions"}])
        watcher, watched, _ = await subscribe(api, api.keys.access_token(users["alice"]),
                                              [{"event": "INSERT", "table": "questions"}])
        before = ask(conn, users["alice"], "before signing in")
        await watched.wait_for(lambda e: e["record"]["id"] == before)
        assert inbox.events == []
        # Signing in sends the user's token to every joined channel.
        await client.set_auth(api.keys.access_token(users["alice"]))
        # The refresh has no reply: keep asking until one arrives.
        deadline = time.monotonic() + WAIT
        while not inbox.events and time.monotonic() < deadline:
            ask(conn, users["alice"], "after signing in")
            await asyncio.sleep(0.2)
        assert inbox.events, "no event after the token refresh"
        assert {e["record"]["question"] for e in inbox.events} == {"after signing in"}
        await client.close()
        await watcher.close()

    run(main)
