"""Issue 13: answers delivered over Realtime Broadcast on private per-user topics.

The real answer worker (a streamed chat double at the HTTP level for generative
answers) sends `delta` and `done` on `answers:<asker uid>`; realtime-py (what supabase-py
uses), unchanged, joins private channels on the local Realtime server, which checks the
join against the policies on `realtime.messages` as Supabase does. Checked as the
owner, another user and anon, with forged and expired tokens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import test_api_realtime
from conftest import http_double, wait_for
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from test_answering import FakeChat, _chat_handler, llm_for
from test_api_realtime import Api, run

from worker.devstack.api.realtime.broadcast import Authorizer
from worker.jobs.answering import AnswerConfig, AnswerWorker
from worker.jobs.embedding import EmbeddingWorker
from worker.users import User

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets"),
    pytest.mark.filterwarnings("ignore:The '(timeout|verify)' parameter is deprecated"),
]

WAIT = 20.0


# The API in-process with its Realtime route, as test_api_realtime serves it.
api = test_api_realtime.api


@pytest.fixture
def users(conn) -> dict[str, User]:
    made = test_api_realtime.make_users(conn)
    conn.execute("insert into public.documents (owner_id, team, visibility, title, content)"
                 " values (%s, 'a', 'team', 'runbook', 'The red database restarts on"
                 " Tuesdays at noon.')", (made["alice"].id,))
    conn.commit()
    return made


@pytest.fixture
def chat() -> Iterator[FakeChat]:
    fake = FakeChat()
    with http_double(_chat_handler(fake)) as fake.url:
        yield fake


def topic_of(user: User) -> str:
    return f"answers:{user.id}"


def ask(conn: psycopg.Connection[Any], user: User, question: str) -> str:
    row = conn.execute("insert into public.questions (asker_id, question) values (%s, %s)"
                       " returning id", (user.id, question)).fetchone()
    conn.commit()
    assert row is not None
    return str(row["id"])


class Listener:
    """A realtime-py client on one private answers topic, recording what arrives."""

    def __init__(self, api: Api, token: str | None) -> None:
        self.client = AsyncRealtimeClient(f"{api.url}/realtime/v1", token=api.keys.anon_key,
                                          auto_reconnect=False)
        self.token = token
        self.received: list[dict[str, Any]] = []
        self.states: list[tuple[RealtimeSubscribeStates, Exception | None]] = []
        self.channel: Any = None

    async def join(self, topic: str, *, private: bool = True,
                   broadcast: dict[str, bool] | None = None) -> RealtimeSubscribeStates:
        if self.token is not None:
            await self.client.set_auth(self.token)
        self.channel = self.client.channel(topic, {"config": {
            "private": private, "broadcast": broadcast or {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False}}})
        for event in ("delta", "done", "failed", "probe"):
            self.channel.on_broadcast(event, self.received.append)
        await self.channel.subscribe(lambda state, error: self.states.append((state, error)))
        return self.states[-1][0]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m["payload"] for m in self.received if m["event"] == name]

    async def wait_for(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if found := self.events(name):
                return found[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {name} event in {WAIT} s; got {self.received}")

    async def close(self) -> None:
        await self.client.close()


def answer_row(conn: psycopg.Connection[Any], question_id: str) -> dict[str, Any]:
    row = conn.execute("select * from public.answers where question_id = %s",
                       (question_id,)).fetchone()
    conn.commit()
    assert row is not None
    return dict(row)


# -- the policy, in the catalog and as each caller --------------------------------------


def test_the_answers_policy_is_in_the_catalog(conn):
    policies = conn.execute(
        "select policyname, cmd, roles::text[] as roles from pg_policies"
        " where schemaname = 'realtime' and tablename = 'messages'"
        " and policyname like 'suparag%%'").fetchall()
    assert [(p["cmd"], p["roles"]) for p in policies] == [("SELECT", ["authenticated"])]
    # Only the worker sends: the API roles may not call the sender.
    for role in ("anon", "authenticated"):
        assert conn.execute(
            "select has_function_privilege(%s, 'suparag_private.publish_answer(uuid, text,"
            " jsonb)', 'execute') as ok", (role,)).fetchone() == {"ok": False}


def test_only_the_asker_may_read_their_topic_and_nobody_may_send(db_url, users, api):
    authorizer = Authorizer(db_url)
    alice, bob = users["alice"].claims(), users["bob"].claims()
    topic = topic_of(users["alice"])
    try:
        assert authorizer.can_read(alice, topic)
        assert not authorizer.can_read(bob, topic)
        assert not authorizer.can_read({"role": "anon"}, topic)
        # A claim naming a role that is not an API role is refused outright.
        assert not authorizer.can_read({**alice, "role": "postgres"}, topic)
        # No insert policy: not even the asker may send on it.
        assert not authorizer.can_write(alice, topic)
        assert not authorizer.can_write(bob, topic)
        # Another topic is not the asker's either.
        assert not authorizer.can_read(alice, f"answers:{users['bob'].id}")
        assert not authorizer.can_read(alice, "answers:")
    finally:
        authorizer.close()


def test_an_authorization_check_leaves_nothing_behind(conn, db_url, users):
    before = conn.execute("select count(*) as n from realtime.messages").fetchone()
    authorizer = Authorizer(db_url)
    try:
        authorizer.can_read(users["alice"].claims(), topic_of(users["alice"]))
        authorizer.can_write(users["alice"].claims(), topic_of(users["alice"]))
    finally:
        authorizer.close()
    assert conn.execute("select count(*) as n from realtime.messages").fetchone() == before


# -- delivery ------------------------------------------------------------------------------


def test_the_asker_receives_deltas_in_order_and_done_equals_the_row(
        api, conn, db_url, users, embedder, chat):
    EmbeddingWorker(db_url, embedder).drain()
    chat.reply = " ".join(f"word{i}" for i in range(30))
    chat.token_delay = 0.01
    alice = users["alice"]

    async def main() -> None:
        mine = Listener(api, api.keys.access_token(alice))
        assert await mine.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED
        question = ask(conn, alice, "When does the red database restart?")
        worker = AnswerWorker(db_url, embedder, llm=llm_for(chat),
                              config=AnswerConfig(delta_seconds=0.0))
        try:
            await asyncio.to_thread(worker.drain)
        finally:
            worker.close()
        done = await mine.wait_for("done")
        row = answer_row(conn, question)
        assert done["question_id"] == question and done["answer_id"] == str(row["id"])
        assert done["content"] == row["content"] == chat.reply
        assert done["citations"] == row["citations"] and done["citations"]
        deltas = mine.events("delta")
        assert len(deltas) > 1  # streamed, not sent whole at the end
        text = ""
        for delta in deltas:  # in order: each starts where the previous ended
            assert delta["question_id"] == question and delta["offset"] == len(text)
            text += delta["text"]
        assert text == row["content"]
        # The done event came after every delta.
        assert mine.received[-1]["event"] == "done"
        await mine.close()

    run(main)


def test_another_user_and_anon_cannot_join_and_never_receive(api, conn, db_url, users,
                                                             embedder):
    EmbeddingWorker(db_url, embedder).drain()
    alice, bob = users["alice"], users["bob"]

    async def main() -> None:
        intruder = Listener(api, api.keys.access_token(bob))
        assert await intruder.join(topic_of(alice)) == RealtimeSubscribeStates.CHANNEL_ERROR
        assert "You do not have permissions to read from this Channel topic" in str(
            intruder.states[-1][1])
        stranger = Listener(api, None)  # the anon key only
        assert await stranger.join(topic_of(alice)) == RealtimeSubscribeStates.CHANNEL_ERROR
        # bob on his own topic, and on alice's topic as a public channel (a different
        # channel: private messages never reach it).
        own = Listener(api, api.keys.access_token(bob))
        assert await own.join(topic_of(bob)) == RealtimeSubscribeStates.SUBSCRIBED
        public = Listener(api, api.keys.access_token(bob))
        assert await public.join(topic_of(alice), private=False) == \
            RealtimeSubscribeStates.SUBSCRIBED
        mine = Listener(api, api.keys.access_token(alice))
        assert await mine.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED

        ask(conn, alice, "When does the red database restart?")
        worker = AnswerWorker(db_url, embedder)  # extractive
        try:
            await asyncio.to_thread(worker.drain)
        finally:
            worker.close()
        await mine.wait_for("done")
        # A direct send to alice's private topic reaches alice only.
        conn.execute("select realtime.send('{\"n\": 1}', 'probe', %s, true)", (topic_of(alice),))
        conn.commit()
        assert (await mine.wait_for("probe"))["n"] == 1
        await asyncio.sleep(0.3)
        for other in (intruder, stranger, own, public):
            assert other.received == [], other.received
        for listener in (intruder, stranger, own, public, mine):
            await listener.close()

    run(main)


def test_a_rolled_back_send_sends_nothing(api, conn, users):
    alice = users["alice"]

    async def main() -> None:
        mine = Listener(api, api.keys.access_token(alice))
        assert await mine.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED
        conn.execute("select realtime.send('{\"n\": 1}', 'probe', %s)", (topic_of(alice),))
        conn.rollback()
        conn.execute("select realtime.send('{\"n\": 2}', 'probe', %s)", (topic_of(alice),))
        conn.commit()
        assert (await mine.wait_for("probe"))["n"] == 2
        await asyncio.sleep(0.3)
        assert [e["n"] for e in mine.events("probe")] == [2]
        await mine.close()

    run(main)


def test_a_late_subscriber_gets_the_answer_by_refetching_the_row(api, conn, db_url, users,
                                                                 embedder):
    """What the README tells clients: subscribe, then read the row; done may be past."""
    EmbeddingWorker(db_url, embedder).drain()
    alice = users["alice"]
    question = ask(conn, alice, "When does the red database restart?")
    worker = AnswerWorker(db_url, embedder)
    try:
        worker.drain()
    finally:
        worker.close()

    async def main() -> None:
        late = Listener(api, api.keys.access_token(alice))
        assert await late.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED
        await asyncio.sleep(0.3)
        assert late.received == []  # nothing is replayed
        await late.close()

    run(main)
    # The refetch, as the asker through the API's rules: the finished answer is there.
    from supabase import create_client
    client = create_client(api.url, api.keys.anon_key)
    client.postgrest.auth(api.keys.access_token(alice))
    rows = client.table("answers").select("status, content").eq(
        "question_id", question).execute().data
    assert rows and rows[0]["status"] == "done" and "red database" in rows[0]["content"]


# -- tokens -----------------------------------------------------------------------------------


def test_forged_and_expired_tokens_are_refused_at_join(api, users):
    alice = users["alice"]
    good = api.keys.access_token(alice)
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-project-secret-but-as-long-as-one", algorithm="HS256")
    expired = jwt.encode({**claims, "exp": int(time.time()) - 60},
                         api.keys.jwt_secret, algorithm="HS256")

    async def main() -> None:
        for token, reason in ((forged, "JwtSignatureError"), (expired, "Token has expired")):
            listener = Listener(api, None)
            listener.client.access_token = token  # set_auth would refuse nothing either
            await listener.join(topic_of(alice))
            assert listener.states[-1][0] == RealtimeSubscribeStates.CHANNEL_ERROR
            assert reason in str(listener.states[-1][1])
            await listener.close()

    run(main)


def test_a_refreshed_token_of_another_user_or_expired_ends_the_channel(api, conn, users):
    alice, bob = users["alice"], users["bob"]
    good = api.keys.access_token(alice)
    claims = jwt.decode(good, options={"verify_signature": False})
    expired = jwt.encode({**claims, "exp": int(time.time()) - 60},
                         api.keys.jwt_secret, algorithm="HS256")

    async def main() -> None:
        for token in (api.keys.access_token(bob), expired):
            mine = Listener(api, good)
            assert await mine.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED
            await mine.client.set_auth(token)
            assert await asyncio.to_thread(
                wait_for, lambda m=mine: any(s == RealtimeSubscribeStates.CLOSED or
                                             s == RealtimeSubscribeStates.CHANNEL_ERROR
                                             for s, _ in m.states[1:]), 10)
            conn.execute("select realtime.send('{}', 'probe', %s)", (topic_of(alice),))
            conn.commit()
            await asyncio.sleep(0.3)
            assert mine.events("probe") == []
            await mine.close()

    run(main)


# -- client broadcasts --------------------------------------------------------------------------


def test_client_broadcasts_reach_the_topic_with_self_and_ack_as_asked(api, users):
    async def main() -> None:
        token = api.keys.access_token(users["alice"])
        sender, other = Listener(api, token), Listener(api, token)
        await sender.join("room", private=False, broadcast={"self": True, "ack": True})
        await other.join("room", private=False)
        await sender.channel.send_broadcast("probe", {"n": 7})
        assert (await other.wait_for("probe"))["n"] == 7
        assert (await sender.wait_for("probe"))["n"] == 7  # self: its own came back
        quiet = Listener(api, token)
        await quiet.join("room", private=False)  # self off: the sender does not hear it
        await quiet.channel.send_broadcast("probe", {"n": 8})
        deadline = time.monotonic() + WAIT  # fanned out to other first: then quiet is judged
        while len(other.events("probe")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [e["n"] for e in other.events("probe")] == [7, 8]
        await asyncio.sleep(0.1)
        assert [e["n"] for e in quiet.events("probe")] == []
        for listener in (sender, other, quiet):
            await listener.close()

    run(main)


def test_a_user_cannot_send_on_their_private_answers_topic(api, users):
    """No insert policy: a forged `done` from the asker's own client reaches nobody."""
    alice = users["alice"]

    async def main() -> None:
        token = api.keys.access_token(alice)
        sender, listener = Listener(api, token), Listener(api, token)
        assert await sender.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED
        assert await listener.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED
        await sender.channel.send_broadcast("done", {"content": "forged"})
        await asyncio.sleep(0.5)
        assert listener.received == [] and sender.received == []
        await sender.close()
        await listener.close()

    run(main)


# -- the work per message ------------------------------------------------------------------------


def metrics(api: Api, key: str) -> httpx.Response:
    return httpx.get(f"{api.url}/realtime/v1/metrics", headers={"apikey": key}, timeout=30)


def counters(api: Api) -> dict[str, float]:
    response = metrics(api, api.keys.service_role_key)
    assert response.status_code == 200, response.text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in response.text.splitlines() if line and not line.startswith("#")}


def test_broadcast_delivery_runs_no_query_per_message(
        api, conn, users):
    """What `suparag bench answers --delivery` reads: statements run as subscribers."""
    assert metrics(api, api.keys.anon_key).status_code == 401
    alice = users["alice"]
    queries = 'suparag_realtime_authorization_queries_total{path="%s"}'
    sent = 'suparag_realtime_messages_sent_total{kind="%s"}'

    async def main() -> None:
        listeners = []
        for _ in range(3):
            listener = Listener(api, api.keys.access_token(alice))
            assert await listener.join(topic_of(alice)) == RealtimeSubscribeStates.SUBSCRIBED
            listeners.append(listener)
        joined = counters(api)
        assert joined[queries % "broadcast"] == 3 * 4  # one read check per join
        for n in range(5):
            conn.execute("select realtime.send(%s, 'probe', %s)",
                         (json.dumps({"n": n}), topic_of(alice)))
            conn.commit()
        for listener in listeners:
            await asyncio.to_thread(wait_for, lambda x=listener: len(x.events("probe")) == 5, 10)
        after = counters(api)
        assert after[sent % "broadcast"] - joined[sent % "broadcast"] == 15
        assert after[queries % "broadcast"] == joined[queries % "broadcast"]  # none per message
        for listener in listeners:
            await listener.close()

    run(main)
