"""Issue 5: "The async client's Realtime channel, subscribed to `answers`, receives the
answer to its user's question and never the answer to another user's question."

supabase-py's async client (`acreate_client`), unchanged, against the in-process API;
the real answer worker answers both users' questions (extractive: no chat model)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from supabase import AsyncClient, acreate_client
from test_api_realtime import Api, Inbox, run, serve

from worker.devstack.api.auth import hash_password
from worker.jobs.answering import EXTRACTIVE_HEADER, AnswerWorker
from worker.jobs.embedding import EmbeddingWorker
from worker.users import User, add_user

pytestmark = [
    # The realtime client reads deprecated websockets attributes when a socket closes,
    # and supabase-py passes deprecated arguments to its own sub-clients.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets"),
    pytest.mark.filterwarnings("ignore:The '(timeout|verify)' parameter is deprecated"),
]

WAIT = 30.0
PASSWORD = "correct horse battery"


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from serve(db_url, tmp_path / "home")


@pytest.fixture
def users(conn) -> dict[str, User]:
    made = {"alice": add_user(conn, "alice@example.com", team="a"),
            "bob": add_user(conn, "bob@example.com", team="b")}
    for owner, team, title, content in (
        ("alice", "a", "alice's runbook", "The red database restarts every Tuesday at noon."),
        ("bob", "b", "bob's runbook", "The blue database restarts every Friday at midnight."),
    ):
        conn.execute("insert into public.documents (owner_id, team, visibility, title, content)"
                     " values (%s, %s, 'team', %s, %s)", (made[owner].id, team, title, content))
        # The operator gives the account a password (sign-up refuses an existing email).
        conn.execute("update auth.users set encrypted_password = %s where id = %s",
                     (hash_password(PASSWORD), made[owner].id))
    conn.commit()
    return made


async def signed_in_listener(api: Api, email: str) -> tuple[AsyncClient, Inbox]:
    """An app's async client: signed in, its channel subscribed to every change of answers."""
    client = await acreate_client(api.url, api.keys.anon_key)
    session = (await client.auth.sign_in_with_password(
        {"email": email, "password": PASSWORD})).session
    assert session is not None
    # The client hands the new token to Realtime in a background task.
    deadline = time.monotonic() + WAIT
    while client.realtime.access_token != session.access_token:
        assert time.monotonic() < deadline, "the client never set the Realtime token"
        await asyncio.sleep(0.02)
    inbox = Inbox()
    subscribed = asyncio.Event()
    channel = client.channel(f"answers-{email}")
    channel.on_postgres_changes("*", schema="public", table="answers", callback=inbox)
    await channel.subscribe(lambda state, error: subscribed.set()
                            if state.value == "SUBSCRIBED" else None)
    await asyncio.wait_for(subscribed.wait(), WAIT)
    return client, inbox


def test_each_users_channel_receives_only_their_own_answer(api, db_url, users, embedder):
    EmbeddingWorker(db_url, embedder).drain()

    async def main() -> None:
        alice, alice_inbox = await signed_in_listener(api, "alice@example.com")
        bob, bob_inbox = await signed_in_listener(api, "bob@example.com")
        try:
            question = {"question": "when does the database restart?"}
            asked = {
                "alice": (await alice.table("questions").insert(question).execute()).data[0],
                "bob": (await bob.table("questions").insert(question).execute()).data[0],
            }
            assert asked["alice"]["asker_id"] == str(users["alice"].id)

            worker = AnswerWorker(db_url, embedder)
            try:
                result = await asyncio.to_thread(worker.drain)
            finally:
                worker.close()
            assert result.answered == 2

            mine = (await alice_inbox.wait_for(lambda e: e["record"]["status"] == "done"))[
                "record"]
            assert mine["question_id"] == asked["alice"]["id"]
            assert mine["mode"] == "extractive" and EXTRACTIVE_HEADER in mine["content"]
            assert "Tuesday" in mine["content"] and "Friday" not in mine["content"]
            theirs = (await bob_inbox.wait_for(lambda e: e["record"]["status"] == "done"))[
                "record"]
            assert theirs["question_id"] == asked["bob"]["id"]
            assert "Friday" in theirs["content"] and "Tuesday" not in theirs["content"]

            # Each rates their answer; once that later change has arrived, every earlier
            # change that could reach a channel has arrived too (delivery is in commit order).
            for client, answer, inbox in ((alice, mine, alice_inbox), (bob, theirs, bob_inbox)):
                await client.table("answers").update({"feedback": 1}) \
                    .eq("id", answer["id"]).execute()
                await inbox.wait_for(lambda e, a=answer: e["record"]["id"] == a["id"]
                                     and e["record"]["feedback"] == 1)
            assert {e["record"]["question_id"] for e in alice_inbox.events} == {
                asked["alice"]["id"]}
            assert {e["record"]["question_id"] for e in bob_inbox.events} == {asked["bob"]["id"]}
        finally:
            for client in (alice, bob):
                await client.realtime.close()

    run(main)
