"""A team document's team defaults to the caller's (migration 20261202000000), and the
documents policies read the JWT once per query (Supabase's advisor lint 0003)."""

from __future__ import annotations

import re

import psycopg
import pytest
from conftest import claims_of
from postgrest.exceptions import APIError
from test_api_rest import api, signed_in  # noqa: F401  (api is a fixture)

from worker.db import as_request

INSERT = ("insert into public.documents (title, content, visibility) values (%s, 'text', %s)"
          " returning id, team, owner_id")


def readers(conn, world, doc_id) -> set[str]:
    found = set()
    for caller in ("anon", "alice", "carol", "bob", "mallory"):
        with as_request(conn, claims_of(world, caller)):
            if conn.execute("select 1 from public.documents where id = %s",
                            (doc_id,)).fetchone():
                found.add(caller)
    return found


def test_a_team_document_takes_the_callers_team(conn, world):
    with as_request(conn, claims_of(world, "carol")):
        row = conn.execute(INSERT, ("carol's runbook", "team")).fetchone()
    assert row["team"] == "a"  # carol's app_metadata team
    assert readers(conn, world, row["id"]) == {"alice", "carol"}


def test_turning_a_document_into_a_team_document_takes_the_callers_team(conn, world):
    with as_request(conn, claims_of(world, "bob")):
        row = conn.execute(INSERT, ("bob's notes", "private")).fetchone()
        assert row["team"] is None
        updated = conn.execute("update public.documents set visibility = 'team' where id = %s"
                               " returning team", (row["id"],)).fetchone()
    assert updated["team"] == "b"
    assert readers(conn, world, row["id"]) == {"bob"}


def test_a_team_that_is_not_the_callers_is_still_refused(conn, world):
    with (pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
          as_request(conn, claims_of(world, "carol"))):
        conn.execute("insert into public.documents (title, visibility, team)"
                     " values ('sneaky', 'team', 'b')")


def test_a_caller_without_a_team_is_told_what_to_send(conn, world):
    """mallory's team is only in user_metadata, which grants nothing."""
    with (pytest.raises(psycopg.errors.CheckViolation) as caught,
          as_request(conn, claims_of(world, "mallory"))):
        conn.execute(INSERT, ("mallory's plan", "team"))
    diag = caught.value.diag
    assert diag.message_primary == "a team document needs a team, and the caller has none"
    assert "visibility 'private' or 'public'" in diag.message_hint


def test_the_first_insert_of_a_new_user_through_the_client(api, conn):  # noqa: F811
    """What a new app writes: no team in the row, the team known from the JWT."""
    red = signed_in(api, conn, "rita@example.com", team="red")
    row = red.table("documents").insert(
        {"title": "Rota", "content": "who is on call", "visibility": "team"}).execute().data[0]
    assert row["team"] == "red"
    loner = signed_in(api, conn, "lone@example.com", team=None)
    with pytest.raises(APIError) as caught:
        loner.table("documents").insert({"title": "x", "visibility": "team"}).execute()
    assert caught.value.code == "23514"
    assert caught.value.message == "a team document needs a team, and the caller has none"
    assert "suparag users add" in (caught.value.hint or "")


AUTH_CALL = re.compile(r"auth\.(uid|jwt|role|email)\(\)")
WRAPPED = re.compile(r"SELECT auth\.(uid|jwt|role|email)\(\)", re.IGNORECASE)


def test_every_policy_reads_auth_once_per_query(conn):
    """Each auth.<function>() in our policies is wrapped in its own select, which
    PostgreSQL runs once per query (an initplan). Stricter than the advisor, which is
    content with one wrapped call per policy."""
    rows = conn.execute(
        "select schemaname || '.' || tablename || ': ' || policyname as policy,"
        " coalesce(qual, '') || ' ' || coalesce(with_check, '') as expr"
        " from pg_policies where schemaname in ('public', 'suparag_private', 'realtime')"
    ).fetchall()
    assert rows
    unwrapped = [r["policy"] for r in rows
                 if len(AUTH_CALL.findall(r["expr"])) != len(WRAPPED.findall(r["expr"]))]
    assert unwrapped == []


def test_the_advisors_initplan_lint_finds_nothing(conn):
    """The condition of Supabase's lint 0003_auth_rls_initplan (supabase/splinter), run on
    our tables."""
    found = conn.execute(
        r"""
        select p.schemaname, p.tablename, p.policyname from pg_policies p
        join pg_class c on c.relname = p.tablename
        join pg_namespace n on n.oid = c.relnamespace and n.nspname = p.schemaname
        where c.relrowsecurity and (
          (p.qual ~ '(auth)\.(uid|jwt|role|email)\(\)'
           and lower(p.qual) !~ 'select\s+(auth)\.(uid|jwt|role|email)\(\)')
          or (p.with_check ~ '(auth)\.(uid|jwt|role|email)\(\)'
              and lower(p.with_check) !~ 'select\s+(auth)\.(uid|jwt|role|email)\(\)'))
        """).fetchall()
    assert found == []


def test_the_usage_tables_foreign_keys_are_indexed(conn):
    """Advisor lint 0001: deleting a question or a user must not scan the usage table."""
    unindexed = conn.execute(
        """
        select c.conname from pg_constraint c
        where c.contype = 'f' and c.connamespace in
          ('public'::regnamespace, 'suparag_private'::regnamespace)
          and not exists (select from pg_index i where i.indrelid = c.conrelid
                          and (i.indkey::int2[])[0] = c.conkey[1])
        """).fetchall()
    assert unindexed == []
