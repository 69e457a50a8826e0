"""Questions, answers and the answer queue, exercised as PostgREST would run each caller.

Alice and bob each ask a question and get an answer (written as the worker
would, by the superuser connection). Then every caller (anon, alice, her team
mate carol, bob, mallory, service_role) reads and writes under RLS inside a
rolled-back transaction.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import World, claims_of
from psycopg.types.json import Jsonb

from worker.db import set_request_context

QUESTION_READERS = {
    "anon": set(),
    "alice": {"alice"},
    "carol": set(),  # a team mate does not read alice's questions
    "bob": {"bob"},
    "mallory": set(),
    "service": {"alice", "bob"},
}


@pytest.fixture
def asked(conn, world) -> dict[str, dict[str, Any]]:
    """asker name -> {"question": id, "answer": id}."""
    out: dict[str, dict[str, Any]] = {}
    for name in ("alice", "bob"):
        user = world.users[name]
        q = conn.execute(
            "insert into public.questions (asker_id, question) values (%s, %s)"
            " returning id, conversation_id",
            (user.id, f"what does {name} want to know?"),
        ).fetchone()
        a = conn.execute(
            "insert into public.answers (question_id, asker_id, conversation_id, content, mode,"
            " citations, status) values (%s, %s, %s, 'an answer', 'extractive', %s, 'done')"
            " returning id",
            (q["id"], user.id, q["conversation_id"], Jsonb([])),
        ).fetchone()
        out[name] = {"question": q["id"], "answer": a["id"]}
    conn.commit()
    return out


def as_caller(conn: psycopg.Connection[Any], world: World, caller: str, sql: str,
              params: Any = None) -> psycopg.Cursor[Any]:
    """Run sql as caller; the caller's transaction must be open (force_rollback)."""
    set_request_context(conn, claims_of(world, caller))
    return conn.execute(sql, params)


def by_asker(world: World, ids: set[Any]) -> set[str]:
    names = {u.id: n for n, u in world.users.items()}
    return {names[i] for i in ids}


# -- reads ------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", sorted(QUESTION_READERS))
@pytest.mark.parametrize("table", ["questions", "answers"])
def test_each_user_reads_only_their_own(conn, world, asked, caller, table):
    with conn.transaction(force_rollback=True):
        if caller == "anon":
            # anon has no privilege at all on these tables
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                as_caller(conn, world, caller, f"select asker_id from public.{table}")
            return
        rows = as_caller(conn, world, caller, f"select asker_id from public.{table}").fetchall()
    assert by_asker(world, {r["asker_id"] for r in rows}) == QUESTION_READERS[caller]


# -- asking -----------------------------------------------------------------------------


def test_asker_defaults_to_caller_and_queues_a_job(conn, world):
    with conn.transaction(force_rollback=True):
        row = as_caller(conn, world, "carol",
                        "insert into public.questions (question) values ('why?')"
                        " returning id, asker_id").fetchone()
        conn.execute("reset role")
        job = conn.execute("select question_id, status, attempts"
                           " from suparag_private.answer_jobs").fetchone()
    assert row["asker_id"] == world.users["carol"].id
    assert job == {"question_id": row["id"], "status": "queued", "attempts": 0}


def test_insert_wakes_answer_workers(conn, world, db_url):
    from worker.db import connect

    with connect(db_url, autocommit=True) as listener:
        listener.execute("listen suparag_answer_jobs")
        with conn.transaction():
            as_caller(conn, world, "bob",
                      "insert into public.questions (question) values ('one'), ('two')")
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload) for n in notes] == [("suparag_answer_jobs", "questions")]


def test_cannot_ask_as_someone_else(conn, world):
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security")):
        as_caller(conn, world, "mallory",
                  "insert into public.questions (asker_id, question) values (%s, 'x')",
                  (world.users["alice"].id,))


def test_anon_cannot_ask(conn, world):
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.InsufficientPrivilege)):
        as_caller(conn, world, "anon", "insert into public.questions (question) values ('x')")


def test_users_cannot_write_answers(conn, world, asked):
    q = asked["alice"]["question"]
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.InsufficientPrivilege)):
        as_caller(conn, world, "alice",
                  "insert into public.answers (question_id, asker_id, conversation_id, mode)"
                  " values (%s, %s, gen_random_uuid(), 'extractive')",
                  (q, world.users["alice"].id))
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.InsufficientPrivilege)):
        as_caller(conn, world, "alice", "delete from public.answers")


# -- feedback ---------------------------------------------------------------------------


@pytest.mark.parametrize(("caller", "whose", "expected"), [
    ("alice", "alice", 1),
    ("bob", "alice", 0),     # not his answer: RLS hides the row
    ("carol", "alice", 0),   # a team mate neither
    ("service", "bob", 1),
])
def test_feedback_only_on_own_answers(conn, world, asked, caller, whose, expected):
    with conn.transaction(force_rollback=True):
        changed = as_caller(conn, world, caller,
                            "update public.answers set feedback = 1 where id = %s",
                            (asked[whose]["answer"],)).rowcount
    assert changed == expected


@pytest.mark.parametrize("column", ["content", "status", "citations", "asker_id"])
def test_asker_cannot_change_anything_but_feedback(conn, world, asked, column):
    value = {"content": "'forged'", "status": "'failed'", "citations": "'[]'",
             "asker_id": "asker_id"}[column]
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied")):
        as_caller(conn, world, "alice",
                  f"update public.answers set {column} = {value} where id = %s",
                  (asked["alice"]["answer"],))


def test_feedback_is_minus_one_zero_or_one(conn, world, asked):
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.CheckViolation)):
        as_caller(conn, world, "alice", "update public.answers set feedback = 2")


def test_anon_cannot_give_feedback(conn, world, asked):
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.InsufficientPrivilege)):
        as_caller(conn, world, "anon", "update public.answers set feedback = -1")


# -- private parts ----------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["anon", "alice", "mallory"])
@pytest.mark.parametrize("sql", [
    "select * from suparag_private.answer_jobs",
    "select * from suparag_private.usage",
    "select * from suparag_private.claim_answer_jobs('me', 10, 60)",
    "select suparag_private.retry_answer_jobs()",
])
def test_queue_and_usage_are_closed_to_api_roles(conn, world, caller, sql):
    with (conn.transaction(force_rollback=True),
          pytest.raises(psycopg.errors.InsufficientPrivilege)):
        as_caller(conn, world, caller, sql)


def test_tables_are_in_the_realtime_publication(conn):
    rows = conn.execute(
        "select tablename from pg_catalog.pg_publication_tables"
        " where pubname = 'supabase_realtime' and schemaname = 'public' order by tablename"
    ).fetchall()
    assert {"answers", "questions"} <= {r["tablename"] for r in rows}


# -- claiming, failing, retrying ----------------------------------------------------------


def test_claim_fail_backoff_cap_and_retry(conn, world, asked):
    claim = "select * from suparag_private.claim_answer_jobs(%s, 10, 60, %s)"
    jobs = conn.execute(claim, ("w1", None)).fetchall()
    assert {j["question_id"] for j in jobs} == {asked["alice"]["question"],
                                                asked["bob"]["question"]}
    # leased: a second worker gets nothing
    assert conn.execute(claim, ("w2", None)).fetchall() == []
    alice_job = next(j for j in jobs if j["question_id"] == asked["alice"]["question"])
    outcome = conn.execute("select suparag_private.fail_answer_job(%s, 'boom', 2, 3600) as o",
                           (alice_job["job_id"],)).fetchone()["o"]
    assert outcome == "queued"
    # backed off: not due for an hour
    assert conn.execute(claim, ("w2", None)).fetchall() == []
    conn.execute("update suparag_private.answer_jobs set run_after = now()")
    again = conn.execute(claim, ("w2", [asked["alice"]["question"]])).fetchall()
    assert [(j["question_id"], j["attempts"]) for j in again] == [(asked["alice"]["question"], 2)]
    outcome = conn.execute("select suparag_private.fail_answer_job(%s, 'boom again', 2, 0) as o",
                           (alice_job["job_id"],)).fetchone()["o"]
    assert outcome == "failed"
    assert conn.execute(claim, ("w3", None)).fetchall() == []
    assert conn.execute("select suparag_private.retry_answer_jobs() as n").fetchone()["n"] == 1
    row = conn.execute("select status, attempts from suparag_private.answer_jobs"
                       " where question_id = %s", (asked["alice"]["question"],)).fetchone()
    assert row == {"status": "queued", "attempts": 0}
