"""The `suparag_worker` role (migration 20261202100000): the worker's full embed and answer
paths work connected as it, and it can do nothing else of note: no Auth secrets, no other
role, no bypassing RLS, no writing users' documents."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from conftest import http_double
from test_openai_embedder import FakeOpenAI, _handler
from test_spaces import DOCS, add, chunk_counts, vectors_in, worker_for

from bench.embedding_double import MODEL, DoubleState, Faults, serve
from worker.db import as_request, connect
from worker.jobs.answering import AnswerConfig, AnswerWorker
from worker.jobs.embedding import EmbeddingWorker
from worker.models.openai import OpenAIEmbedder
from worker.usage import MeteredEmbedder
from worker.users import add_user


def as_worker(db_url: str) -> str:
    parts = urlsplit(db_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"suparag_worker@{host}"))


@pytest.fixture
def worker_url(conn: Any, db_url: str) -> str:
    # What an operator does once (docs/deploy.md): give the role a login.
    conn.execute("alter role suparag_worker login")
    conn.commit()
    return as_worker(db_url)


@pytest.fixture
def embedder() -> Iterator[OpenAIEmbedder]:
    with serve(DoubleState(faults=Faults(), enabled=False)) as base_url:
        yield OpenAIEmbedder(MODEL, api_key="sk-test", base_url=base_url)


def test_embed_and_answer_paths_as_the_worker_role(conn, worker_url, embedder) -> None:
    # Created the same on every PostgreSQL: without bypassrls, which hosted
    # PostgreSQL 15 lets only a superuser grant (issue 17).
    assert conn.execute("select rolbypassrls from pg_roles where rolname = 'suparag_worker'"
                        ).fetchone() == {"rolbypassrls": False}
    alice = add_user(conn, "alice@example.com", team="a")
    bob = add_user(conn, "bob@example.com", team="b")
    conn.commit()
    doc_ids = []
    for user, title, text, visibility in (
            (alice, "Backups", "Backups run nightly at two and are kept for thirty days.",
             "private"),
            (bob, "Bob's secret", "Backups of the secret vault run at noon.", "private")):
        with as_request(conn, user.claims()):
            doc_ids.append(conn.execute(
                "insert into public.documents (owner_id, title, content, visibility)"
                " values (%s, %s, %s, %s) returning id",
                (user.id, title, text, visibility)).fetchone()["id"])
    metered = MeteredEmbedder(embedder, worker_url, feature="embedding.documents")
    embedding = EmbeddingWorker(worker_url, metered)
    try:
        totals = embedding.drain()
        assert embedding.seconds_until_due() is None
    finally:
        embedding.close()
        metered.close()
    assert totals.embedded == 2 and totals.failed == totals.retrying == 0
    row = conn.execute("select count(*) filter (where embedding_status = 'ready') as ready,"
                       " (select count(*) from suparag_private.usage) as usage"
                       " from public.documents where id = any(%s)", (doc_ids,)).fetchone()
    assert row["ready"] == 2 and row["usage"] >= 1
    conn.commit()

    with as_request(conn, alice.claims()):
        question = conn.execute(
            "insert into public.questions (question) values ('When do backups run?')"
            " returning id").fetchone()["id"]
    answers = AnswerWorker(worker_url, embedder, config=AnswerConfig(min_similarity=-1.0))
    try:
        done = answers.drain()
    finally:
        answers.close()
    assert done.answered == 1 and done.failed == 0
    answer = conn.execute("select status, citations from public.answers"
                          " where question_id = %s", (question,)).fetchone()
    conn.commit()
    assert answer["status"] == "done"
    # Retrieved as alice: her document is cited, bob's private one never.
    cited = {c["document_id"] for c in answer["citations"]}
    assert str(doc_ids[0]) in {str(d) for d in cited}
    assert str(doc_ids[1]) not in {str(d) for d in cited}


@pytest.fixture
def spaces_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    with http_double(_handler(fake)) as fake.url:
        yield fake


def test_space_vectors_as_the_worker_role(conn, db_url, worker_url, embedder,
                                          spaces_server) -> None:
    """A table space's backfill and an edit's write-back (chunks and vectors) as the role."""
    alice = add_user(conn, "alice@example.com", team="a")
    ids = {title: conn.execute(
        "insert into public.documents (owner_id, team, visibility, title, content)"
        " values (%s, 'a', 'private', %s, %s) returning id",
        (alice.id, title, content)).fetchone()["id"] for title, content in DOCS.items()}
    conn.commit()
    worker = worker_for(worker_url, embedder, spaces_server)
    try:
        assert worker.drain().embedded == len(DOCS)
        space = add(db_url)
        total = worker.drain()  # nothing due: the backfill fills the new space
        assert total.backfilled == sum(chunk_counts(conn).values()) > 0
        assert vectors_in(conn, space) == chunk_counts(conn)
        conn.execute("update public.documents set content = content || %s where id = %s",
                     (" Refunds over 500 euros take longer.", ids["refunds"]))
        conn.commit()
        done = worker.drain()  # the write-back: chunks, reused vectors, the space's vectors
        assert (done.embedded, done.failed, done.retrying) == (1, 0, 0)
        assert done.chunks_reused >= 1 or done.chunks_embedded >= 1
    finally:
        worker.close()
    assert vectors_in(conn, space) == chunk_counts(conn)
    row = conn.execute("select embedding_status, (select count(*) from public.document_chunks c"
                       "  where c.document_id = d.id and c.embedding is not null) as chunks"
                       " from public.documents d where id = %s",
                       (ids["refunds"],)).fetchone()
    conn.commit()
    assert row["embedding_status"] == "ready" and row["chunks"] >= 1


@pytest.mark.parametrize("statement", [
    "select encrypted_password from auth.users",
    "select * from auth.users",
    "select * from auth.refresh_tokens",
    "set role service_role",
    "set role postgres",
    "insert into public.documents (owner_id, title, content) values"
    " ((select id from auth.users limit 1), 't', 'c')",
    "update public.documents set content = 'rewritten'",
    "update public.documents set owner_id = owner_id",
    "select * from suparag_private.settings",
    "select suparag_private.retry_embedding_jobs()",
    "insert into suparag_private.embedding_jobs (document_id, content_version)"
    " select id, 1 from public.documents limit 1",
    "delete from public.documents",
    "update public.answers set feedback = 1",
    # It may count a space's failures (and hold the column space's row), nothing more.
    "update suparag_private.embedding_spaces set state = 'dropped'",
    "delete from suparag_private.embedding_spaces",
])
def test_the_worker_role_cannot(worker_url, statement) -> None:
    with connect(worker_url) as worker, pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker.execute(statement)


def test_as_a_user_the_worker_role_sees_only_what_the_user_may(
        conn, worker_url) -> None:
    alice = add_user(conn, "alice@example.com", team="a")
    bob = add_user(conn, "bob@example.com", team="b")
    conn.execute("insert into public.documents (owner_id, title, content, visibility) values"
                 " (%s, 'Bob only', 'private to bob', 'private')", (bob.id,))
    conn.commit()
    with connect(worker_url) as worker:
        row = worker.execute("select row_security_active('public.documents') as rls,"
                             " (select rolbypassrls from pg_roles"
                             "  where rolname = current_user) as bypass").fetchone()
        # RLS applies to it too (no bypassrls, which hosted PostgreSQL 15 cannot
        # grant): its own policies let it read every document.
        assert row["rls"] is True and row["bypass"] is False
        assert worker.execute("select count(*) as n from public.documents"
                              " where title = 'Bob only'").fetchone()["n"] == 1
        worker.commit()
        with as_request(worker, alice.claims()):
            assert worker.execute("select row_security_active('public.documents') as rls"
                                  ).fetchone()["rls"] is True
            seen = worker.execute("select count(*) as n from public.documents"
                                  " where title = 'Bob only'").fetchone()
            assert seen["n"] == 0
            # As a user it has the user's rights, not its own: no status writes.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute("update public.documents set embedding_status = 'ready'")
