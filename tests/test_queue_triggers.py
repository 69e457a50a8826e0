"""The embedding queue: what enqueues, what does not, and how workers are woken."""

from __future__ import annotations

import psycopg
import pytest
from conftest import claims_of

from worker.db import as_request, connect, set_request_context


def jobs(conn, doc_id=None):
    return conn.execute(
        "select document_id, content_version, status, attempts"
        " from suparag_private.embedding_jobs where %(d)s::uuid is null or document_id = %(d)s"
        " order by id", {"d": doc_id}).fetchall()


def doc(conn, doc_id):
    return conn.execute("select * from public.documents where id = %s", (doc_id,)).fetchone()


def new_doc(conn, world, *, owner="alice", content="hello"):
    row = conn.execute(
        "insert into public.documents (owner_id, title, content) values (%s, 't', %s) returning id",
        (world.users[owner].id, content),
    ).fetchone()
    conn.commit()
    return row["id"]


def test_insert_enqueues_version_one(conn, world):
    conn.execute("delete from suparag_private.embedding_jobs")
    doc_id = new_doc(conn, world)
    assert jobs(conn) == [{"document_id": doc_id, "content_version": 1, "status": "queued",
                           "attempts": 0}]
    assert doc(conn, doc_id)["embedding_status"] == "pending"


def test_insert_as_user_enqueues(conn, world):
    """Users cannot touch the queue, yet their inserts reach it (security definer trigger)."""
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    with conn.transaction():
        set_request_context(conn, claims_of(world, "bob"))
        doc_id = conn.execute(
            "insert into public.documents (title, content) values ('t', 'c') returning id"
        ).fetchone()["id"]
    assert [j["document_id"] for j in jobs(conn)] == [doc_id]


def test_metadata_update_enqueues_nothing(conn, world):
    doc_id = new_doc(conn, world)
    conn.execute("delete from suparag_private.embedding_jobs")  # as if the worker finished
    conn.execute("update public.documents set embedding_status = 'ready' where id = %s", (doc_id,))
    conn.execute(
        "update public.documents set metadata = '{\"tag\": 1}', visibility = 'public'"
        " where id = %s", (doc_id,))
    conn.commit()
    assert jobs(conn) == []
    row = doc(conn, doc_id)
    assert (row["content_version"], row["embedding_status"]) == (1, "ready")


def test_unchanged_content_enqueues_nothing(conn, world):
    doc_id = new_doc(conn, world, content="same")
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.execute("update public.documents set content = 'same', title = 't' where id = %s",
                 (doc_id,))
    conn.commit()
    assert jobs(conn) == []


@pytest.mark.parametrize("column", ["content", "title"])
def test_content_or_title_change_enqueues_new_version(conn, world, column):
    doc_id = new_doc(conn, world)
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.execute("update public.documents set embedding_status = 'ready' where id = %s", (doc_id,))
    conn.execute(f"update public.documents set {column} = 'changed' where id = %s", (doc_id,))
    conn.commit()
    assert jobs(conn) == [{"document_id": doc_id, "content_version": 2, "status": "queued",
                           "attempts": 0}]
    assert doc(conn, doc_id)["embedding_status"] == "pending"


def test_change_folds_into_pending_job_and_revives_failed(conn, world):
    doc_id = new_doc(conn, world)
    conn.execute(
        "update suparag_private.embedding_jobs set status = 'failed', attempts = 5,"
        " last_error = 'boom' where document_id = %s", (doc_id,))
    conn.execute("update public.documents set content = 'v2' where id = %s", (doc_id,))
    conn.execute("update public.documents set content = 'v3' where id = %s", (doc_id,))
    conn.commit()
    assert jobs(conn, doc_id) == [{"document_id": doc_id, "content_version": 3, "status": "queued",
                           "attempts": 0}]


def test_version_counts_changes_and_ignores_supplied_values(conn, world):
    doc_id = new_doc(conn, world)
    for text in ("a", "b", "c"):
        # a supplied version is overwritten: only the trigger decides versions
        conn.execute("update public.documents set content = %s, content_version = 1"
                     " where id = %s", (text, doc_id))
    conn.commit()
    assert doc(conn, doc_id)["content_version"] == 4
    assert jobs(conn, doc_id)[0]["content_version"] == 4


def test_delete_removes_job(conn, world):
    doc_id = new_doc(conn, world)
    conn.execute("delete from public.documents where id = %s", (doc_id,))
    conn.commit()
    assert all(j["document_id"] != doc_id for j in jobs(conn))


# -- wake-ups ------------------------------------------------------------------------------


def test_notification_arrives_once_per_transaction(db_url, conn, world):
    with connect(db_url, autocommit=True) as listener:
        listener.execute("listen suparag_embedding_jobs")
        with conn.transaction():
            for i in range(3):
                conn.execute(
                    "insert into public.documents (owner_id, content) values (%s, %s)",
                    (world.users["alice"].id, f"doc {i}"))
        got = list(listener.notifies(timeout=5, stop_after=1))
        more = list(listener.notifies(timeout=0.5))
    assert [n.payload for n in got] == ["documents"]
    assert more == []  # identical notifications of one transaction fold into one


def test_no_notification_for_rollback_or_metadata(db_url, conn, world):
    doc_id = new_doc(conn, world)
    with connect(db_url, autocommit=True) as listener:
        listener.execute("listen suparag_embedding_jobs")
        with conn.transaction(force_rollback=True):
            conn.execute("insert into public.documents (owner_id, content) values (%s, 'x')",
                         (world.users["alice"].id,))
        conn.execute("update public.documents set metadata = '{\"a\": 1}' where id = %s",
                     (doc_id,))
        conn.commit()
        assert list(listener.notifies(timeout=1)) == []


PG_NET_STANDIN = """
create schema net;
create table net.calls (id bigserial primary key, url text, body jsonb, headers jsonb);
create function net.http_post(
  url text, body jsonb default '{}'::jsonb, params jsonb default '{}'::jsonb,
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds integer default 5000
) returns bigint language sql as $$
  insert into net.calls (url, body, headers) values (url, body, headers) returning id
$$;
"""


@pytest.fixture
def pg_net(conn):
    """A stand-in for pg_net's net.http_post that records each call (pg_net cannot run here)."""
    conn.execute(PG_NET_STANDIN)
    conn.commit()
    return lambda: conn.execute("select url, body from net.calls order by id").fetchall()


def test_pg_net_unconfigured_posts_nothing(conn, world, pg_net):
    new_doc(conn, world)
    assert pg_net() == []


def test_pg_net_posts_once_per_transaction(conn, world, pg_net):
    conn.execute("insert into suparag_private.settings (key, value)"
                 " values ('worker_url', 'http://worker.internal:8000/functions/v1/wake')")
    conn.commit()
    with conn.transaction():
        ids = [conn.execute("insert into public.documents (owner_id, content) values (%s, %s)"
                            " returning id", (world.users["alice"].id, f"d{i}")).fetchone()["id"]
               for i in range(3)]
    calls = pg_net()
    assert len(calls) == 1
    assert calls[0]["url"] == "http://worker.internal:8000/functions/v1/wake"
    body = calls[0]["body"]
    assert body["type"] == "INSERT" and body["table"] == "documents"
    assert body["record"]["id"] == str(ids[0])
    assert "content" not in body["record"]  # a wake-up carries no document text
    # A later transaction posts again; a user's own insert does too.
    conn.commit()
    with as_request(conn, claims_of(world, "bob")):
        conn.execute("insert into public.documents (content) values ('by bob')")
    assert len(pg_net()) == 2


def test_without_pg_net_the_trigger_still_works(conn, world):
    assert conn.execute("select to_regnamespace('net') as n").fetchone()["n"] is None
    conn.execute("insert into suparag_private.settings (key, value) values ('worker_url', 'http://x')")
    doc_id = new_doc(conn, world)
    assert [j["document_id"] for j in jobs(conn)][-1] == doc_id


def test_queue_private_even_for_owner_of_rows(conn, world):
    with conn.transaction(force_rollback=True):
        set_request_context(conn, claims_of(world, "alice"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("delete from suparag_private.embedding_jobs")


def test_pg_net_wake_ups_carry_the_vault_secret(conn, world, pg_net):
    """Issue 14: the worker's wake endpoint faces the internet; the trigger sends the
    secret it reads from Vault, and without the secret (or without Vault) posts as before."""
    conn.execute("insert into suparag_private.settings (key, value)"
                 " values ('worker_url', 'http://worker.internal:8000/')")
    conn.commit()

    def last_headers():
        new_doc(conn, world)
        conn.commit()
        return conn.execute("select headers from net.calls order by id desc limit 1"
                            ).fetchone()["headers"]

    assert last_headers() == {"Content-Type": "application/json"}  # no secret set
    conn.execute("select vault.create_secret('s3cret', 'suparag_wake_secret')")
    conn.commit()
    assert last_headers() == {"Content-Type": "application/json",
                              "X-Suparag-Wake-Secret": "s3cret"}
    # Without Vault at all (a database that never had it), the wake-up still goes out.
    conn.execute("drop schema vault cascade")
    conn.commit()
    assert last_headers() == {"Content-Type": "application/json"}
    assert len(pg_net()) == 3


def test_the_api_roles_cannot_read_the_vault(conn, world):
    conn.commit()
    for claims in (None, claims_of(world, "alice")):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_request(conn, claims):
            conn.execute("select decrypted_secret from vault.decrypted_secrets").fetchall()
        conn.rollback()
