"""Issue 13 with supabase-js, unchanged and with its defaults (vsn 2.0.0): the asker's
client joins `answers:<uid>` as a private channel, receives the deltas in order and a
done event equal to the row it refetches, and is refused another user's topic."""

from __future__ import annotations

import os

import test_api_realtime
from test_answer_broadcast import chat  # noqa: F401  (a fixture)
from test_answering import llm_for
from test_supabase_js import PASSWORD, Script, node_command

from worker.devstack.api.auth import hash_password
from worker.jobs.answering import AnswerConfig, AnswerWorker
from worker.jobs.embedding import EmbeddingWorker

api, users = test_api_realtime.api, test_api_realtime.users


def test_supabase_js_streams_its_answer_over_a_private_broadcast_channel(
        api, conn, db_url, users, embedder, chat):  # noqa: F811
    alice, bob = users["alice"], users["bob"]
    conn.execute("update auth.users set encrypted_password = %s where id = %s",
                 (hash_password(PASSWORD), alice.id))
    conn.execute("insert into public.documents (owner_id, team, visibility, title, content)"
                 " values (%s, 'a', 'team', 'runbook', 'The red database restarts on"
                 " Tuesdays at noon.')", (alice.id,))
    conn.commit()
    EmbeddingWorker(db_url, embedder).drain()
    chat.reply = " ".join(f"word{i}" for i in range(25))
    chat.token_delay = 0.01
    env = {**os.environ, "SUPABASE_URL": api.url, "SUPABASE_ANON_KEY": api.keys.anon_key,
           "EMAIL": "alice@example.com", "PASSWORD": PASSWORD, "OTHER_UID": str(bob.id)}
    script = Script([*node_command(), "answers_broadcast.mjs"], env)
    try:
        intruder = script.next("intruder")
        assert intruder["intruder"] == "CHANNEL_ERROR"
        assert "You do not have permissions to read from this Channel topic" in \
            intruder["error"]
        assert script.next("subscribed") == {"subscribed": "SUBSCRIBED", "vsn": "2.0.0"}
        asked = script.next("asked")["asked"]
        worker = AnswerWorker(db_url, embedder, llm=llm_for(chat),
                              config=AnswerConfig(delta_seconds=0.0))
        try:
            assert worker.drain().answered == 1
        finally:
            worker.close()
        got = script.next("deltas")
        assert script.process.wait(timeout=60) == 0, script.process.communicate()[1]
    finally:
        script.close()

    row, done, deltas = got["row"], got["done"], got["deltas"]
    assert row["status"] == "done" and row["content"] == chat.reply
    assert done["question_id"] == asked["id"] and done["answer_id"] == row["id"]
    assert done["content"] == row["content"] and done["citations"] == row["citations"]
    assert len(deltas) > 1
    text = ""
    for delta in deltas:
        assert delta["offset"] == len(text)
        text += delta["text"]
    assert text == row["content"]
