"""Running SQL as an API role, PostgREST style."""

from __future__ import annotations

import pytest

from worker.db import as_request, redact


def test_request_context_is_local_to_the_transaction(conn, world):
    conn.commit()
    with as_request(conn, world.users["alice"].claims(), method="GET", path="/rest/v1/documents",
                    headers={"X-Client-Info": "test"}):
        row = conn.execute(
            "select current_user as role, auth.uid() as uid,"
            " current_setting('request.method') as method,"
            " current_setting('request.headers')::jsonb ->> 'x-client-info' as client").fetchone()
    assert row == {"role": "authenticated", "uid": world.users["alice"].id, "method": "GET",
                   "client": "test"}
    after = conn.execute("select current_user as role, auth.uid() as uid").fetchone()
    assert after == {"role": "postgres", "uid": None}


def test_no_claims_means_anon(conn):
    conn.commit()
    with as_request(conn, None):
        row = conn.execute("select current_user as role, auth.role() as claim").fetchone()
    assert row == {"role": "anon", "claim": "anon"}


def test_refuses_a_connection_inside_a_transaction(conn):
    conn.execute("select 1")  # opens a transaction
    with pytest.raises(RuntimeError, match="idle connection"), as_request(conn, None):
        pass


def test_redact_hides_passwords():
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
