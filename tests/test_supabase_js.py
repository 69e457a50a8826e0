"""supabase-js, unchanged and with its defaults (Realtime vsn 2.0.0), against the local
API, as a JavaScript app uses it (issue 12): sign up and sign in, insert, the `embed`
function, match_documents and hybrid_search under RLS, documents with their chunks, a
Realtime channel on `answers` that receives its user's answer and never another's, and
forged tokens refused on REST and Realtime. The client is the npm release pinned in
tests/js/package-lock.json, installed here with `npm ci` when missing; Node >= 20.

One Node process per scenario (tests/js/*.mjs); each prints JSON lines that the
assertions here read."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import running_app
from test_api_realtime import Api, ask
from test_api_realtime_vsn2 import answer

from worker.devstack.api.app import create_app
from worker.devstack.api.auth import hash_password
from worker.devstack.api.functions import functions_routes
from worker.devstack.api.keys import load_or_create
from worker.devstack.api.realtime.hub import realtime_routes
from worker.jobs.embedding import EmbeddingWorker
from worker.models.base import Embedder
from worker.users import User, add_user

JS = Path(__file__).parent / "js"
WAIT = 60.0
PASSWORD = "correct horse battery"


@pytest.fixture
def api(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Api]:
    """The API as `suparag dev` serves it (REST, auth, Realtime, functions), in-process on
    a free port; `embed` uses the session's model when the test asks for `embedder`."""
    keys = load_or_create(tmp_path / "home")
    model = (request.getfixturevalue("embedder") if "embedder" in request.fixturenames
             else None)

    def load() -> Embedder:
        if model is None:
            raise AssertionError("this test calls `embed`: give it the `embedder` fixture")
        return model

    app = create_app(db_url, keys, routes=[*realtime_routes(db_url, keys),
                                           *functions_routes(keys, load)])
    with running_app(app) as url:
        yield Api(url=url, keys=keys)


@pytest.fixture
def users(conn) -> dict[str, User]:
    """alice and carol (team a) and bob (team b), with passwords the operator set (as
    `suparag users add --password` does)."""
    made = {"alice": add_user(conn, "alice@example.com", team="a"),
            "carol": add_user(conn, "carol@example.com", team="a"),
            "bob": add_user(conn, "bob@example.com", team="b")}
    for user in made.values():
        conn.execute("update auth.users set encrypted_password = %s where id = %s",
                     (hash_password(PASSWORD), user.id))
    conn.commit()
    return made


def node_command() -> list[str]:
    """`node`, with the flag Node 20 needs for the global WebSocket supabase-js uses; the
    packages (supabase-js; typescript for test_typed_client.py) installed first if
    tests/js/node_modules lacks them."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the supabase-js tests: install Node >= 20 "
                    "(with npm) and run again")
    modules = JS / "node_modules"
    if not ((modules / "@supabase" / "supabase-js").is_dir()
            and (modules / ".bin" / "tsc").exists()):
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS,
                                   capture_output=True, text=True, timeout=600)
        if installed.returncode != 0:
            pytest.fail(f"`npm ci` in {JS} failed: {installed.stderr.strip()[-2000:]}")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    if major < 20:
        pytest.fail(f"supabase-js needs Node >= 20, found {version}: upgrade Node")
    return [node, "--experimental-websocket"] if major < 22 else [node]


class Script:
    """A running Node script: its stdout lines as JSON, its stdin to write to."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(args, cwd=JS, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, key: str) -> dict[str, Any]:
        """The next line, which must have `key`, or a failure with the script's stderr."""
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            line = None
        if line is None:
            self.process.kill()
            _, stderr = self.process.communicate(timeout=10)
            raise AssertionError(f"the script ended or stalled before {key!r}: {stderr}")
        obj = json.loads(line)
        assert isinstance(obj, dict) and key in obj, obj
        return obj

    def write(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


def test_supabase_js_receives_its_users_answer_and_never_anothers(api, conn, users):
    command = node_command()
    env = {**os.environ, "SUPABASE_URL": api.url, "SUPABASE_ANON_KEY": api.keys.anon_key,
           "EMAIL": "alice@example.com", "PASSWORD": PASSWORD}
    script = Script([*command, "answers_listener.mjs"], env)
    try:
        # The client's defaults: the 2.0.0 serializer.
        assert script.next("subscribed") == {"subscribed": "SUBSCRIBED", "vsn": "2.0.0"}
        asked = script.next("asked")["asked"]
        assert asked["asker_id"] == str(users["alice"].id)
        # The answer worker's writes: bob's answer commits before alice's.
        bobs = answer(conn, ask(conn, users["bob"], "when does the database restart?"),
                      "Friday at midnight.")
        alices = answer(conn, asked["id"], "Tuesday at noon.")
        script.write("rate")
        events = script.next("events")["events"]
        assert script.process.wait(timeout=WAIT) == 0, script.process.communicate()[1]
    finally:
        script.close()

    assert all(e["schema"] == "public" and e["table"] == "answers" for e in events)
    assert [(e["eventType"], e["new"]["id"]) for e in events] == [
        ("INSERT", alices), ("UPDATE", alices)]
    assert events[0]["new"]["content"] == "Tuesday at noon."
    assert events[1]["new"]["feedback"] == 1
    assert bobs not in json.dumps(events)


#: Who reads which of the script's documents (alice's three, bob's team one).
READABLE = {
    "anon": {"alice public"},
    "dave": {"alice public"},                        # signed up: no team
    "bob": {"alice public", "bob team"},             # team b
    "carol": {"alice team", "alice public"},         # alice's team mate (team a)
    "alice": {"alice private", "alice team", "alice public"},
}


def test_supabase_js_signs_up_inserts_embeds_and_searches_under_rls(api, conn, users,
                                                                     embedder, db_url):
    env = {**os.environ, "SUPABASE_URL": api.url, "SUPABASE_ANON_KEY": api.keys.anon_key,
           "PASSWORD": PASSWORD, "NEW_EMAIL": "dave@example.com"}
    script = Script([*node_command(), "rag_flow.mjs"], env)
    try:
        signed_up = script.next("signed_up")["signed_up"]
        assert signed_up == {"email": "dave@example.com", "has_session": True,
                             "signed_in_same_user": True}, signed_up
        inserted = script.next("inserted")["inserted"]
        # The worker embeds what the app inserted, as `suparag dev`'s worker would.
        assert EmbeddingWorker(db_url, embedder).drain().embedded == len(inserted)
        script.write("embedded")
        reads = script.next("reads")["reads"]
        assert script.process.wait(timeout=WAIT) == 0, script.process.communicate()[1]
    finally:
        script.close()

    # insert().select() returned the rows with what the database filled in from the JWT.
    by_title = {row["title"]: row for row in inserted}
    assert set(by_title) == {"alice private", "alice team", "alice public", "bob team"}
    assert {t: (r["owner_id"], r["team"]) for t, r in by_title.items()} == {
        "alice private": (str(users["alice"].id), None),
        "alice team": (str(users["alice"].id), "a"),
        "alice public": (str(users["alice"].id), None),
        "bob team": (str(users["bob"].id), "b"),
    }
    assert all(r["embedding_status"] == "pending" for r in inserted)

    for caller, readable in READABLE.items():
        got = reads[caller]
        assert set(got["match"]) == readable, (caller, "match_documents", got["match"])
        assert set(got["hybrid"]) == readable, (caller, "hybrid_search", got["hybrid"])
        embedded = {row["title"]: row for row in got["embedded"]}
        assert set(embedded) == readable, (caller, "documents select", list(embedded))
        for row in embedded.values():
            # Each document's chunks came embedded; these texts fit one chunk each.
            assert [c["chunk_index"] for c in row["document_chunks"]] == [0], (caller, row)
            assert row["content"] in row["document_chunks"][0]["content"], (caller, row)
    # The query is about the red database's restarts: the team runbook ranks first
    # for every caller who may read it.
    for caller in ("carol", "alice"):
        assert reads[caller]["match"][0] == "alice team", (caller, reads[caller]["match"])
        assert reads[caller]["hybrid"][0] == "alice team", (caller, reads[caller]["hybrid"])


def test_supabase_js_forged_tokens_are_refused_on_rest_and_realtime(api, users):
    env = {**os.environ, "SUPABASE_URL": api.url, "SUPABASE_ANON_KEY": api.keys.anon_key,
           "EMAIL": "alice@example.com", "PASSWORD": PASSWORD}
    script = Script([*node_command(), "forged_tokens.mjs"], env)
    try:
        rest = script.next("rest")["rest"]
        realtime = script.next("realtime")["realtime"]
        assert script.process.wait(timeout=WAIT) == 0, script.process.communicate()[1]
    finally:
        script.close()

    # The same call with alice's genuine token reads (her table of questions is empty).
    assert rest["genuine"] == {"status": 200, "error": None, "rows": []}, rest["genuine"]
    for forged in ("wrong_secret", "alg_none", "tampered"):
        got = rest[forged]
        assert got["status"] == 401 and got["rows"] is None, (forged, got)
        assert got["error"]["code"] == "PGRST301", (forged, got)

    genuine = realtime["genuine"]
    assert genuine["statuses"] == ["SUBSCRIBED"], genuine
    assert [e["eventType"] for e in genuine["events"]] == ["INSERT"], genuine
    for forged in ("wrong_secret", "alg_none", "tampered"):
        got = realtime[forged]
        assert got["statuses"] and set(got["statuses"]) == {"CHANNEL_ERROR"}, (forged, got)
        assert got["events"] == [], (forged, got)
        # The join's error reply carries upstream's reason (the client retries the join).
        assert got["errors"] and len(set(got["errors"])) == 1, (forged, got)
    assert realtime["wrong_secret"]["errors"][0].startswith("JwtSignatureError"), realtime
    assert realtime["tampered"]["errors"][0].startswith("JwtSignatureError"), realtime
    assert "alg" in realtime["alg_none"]["errors"][0], realtime
