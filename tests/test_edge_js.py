"""supabase-js (the npm release pinned in tests/js) calling `suparag serve`'s search as two
users and with an expired token (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess

from test_edge_service import (  # noqa: F401 (the fixtures)
    ANON_KEY,
    corpus_db,
    readable,
    service,
)
from test_supabase_js import JS, node_command


def test_supabase_js_searches_as_each_user(service):  # noqa: F811
    env = {**os.environ, "EDGE_URL": service.url, "SUPABASE_ANON_KEY": ANON_KEY,
           "TOKENS": json.dumps({u: service.token(u) for u in ("alice", "bob")}),
           "EXPIRED": service.token("alice", lifetime=-30)}
    done = subprocess.run([*node_command(), "edge_search.mjs"], cwd=JS, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    got = {line["user"]: set(line["titles"]) for line in lines if "user" in line}
    assert got == {"alice": readable("alice"), "bob": readable("bob")}
    assert lines[-1] == {"expired": {"status": 401, "code": "PGRST303"}}
