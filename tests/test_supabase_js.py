"""supabase-js, unchanged and with its defaults (Realtime vsn 2.0.0), against the local
API: a signed-in user's channel on `answers` receives their own answer and never
another user's (issue 12). The client is the npm release pinned in
tests/js/package-lock.json, installed here with `npm ci` when missing; Node >= 20."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

import pytest
import test_api_realtime
from test_api_realtime import ask
from test_api_realtime_vsn2 import answer

from worker.devstack.api.auth import hash_password

# The fixtures of test_api_realtime: the API in-process, alice (team a) and bob (team b).
api, users = test_api_realtime.api, test_api_realtime.users

JS = Path(__file__).parent / "js"
WAIT = 60.0
PASSWORD = "correct horse battery"


def node_command() -> list[str]:
    """`node`, with the flag Node 20 needs for the global WebSocket supabase-js uses; the
    packages installed first if tests/js/node_modules is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the supabase-js tests: install Node >= 20 "
                    "(with npm) and run again")
    if not (JS / "node_modules" / "@supabase" / "supabase-js").is_dir():
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
    # alice's password, set as `suparag users add --password` sets it.
    conn.execute("update auth.users set encrypted_password = %s where id = %s",
                  (hash_password(PASSWORD), users["alice"].id))
    conn.commit()
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
