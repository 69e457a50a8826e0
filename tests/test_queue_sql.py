"""The two job queues share one design, written twice in SQL: hold the copies equal.

`suparag_private.embedding_jobs` (migrations 0100, 0300) and
`suparag_private.answer_jobs` (migration 0500) are claimed, leased, failed and
requeued by mirrored tables and functions. Both are landed migrations, so
rather than replace working SQL with one generic (dynamic-SQL) version, these
tests read both copies from the catalog, rename each queue's own nouns to
placeholders, and require the shared parts to be identical. The differences
that are meant (a document's version, a question filter for `suparag ask`)
are listed below with their reasons; anything else that drifts fails here.
"""

from __future__ import annotations

import re

import pytest

from worker.jobs.queue import ANSWERS, EMBEDDINGS

# Each queue's own nouns, renamed before comparing.
NOUNS = {
    EMBEDDINGS: {"embedding_jobs": "{jobs}", "embedding_job": "{job}", "document_id": "{key}",
                 "document_ids": "{keys}", EMBEDDINGS.channel: "{channel}",
                 "'documents'": "'{payload}'"},
    ANSWERS: {"answer_jobs": "{jobs}", "answer_job": "{job}", "question_id": "{key}",
              "question_ids": "{keys}", ANSWERS.channel: "{channel}",
              "'questions'": "'{payload}'"},
}

# Differences meant to be there, by queue and function: the normalised lines left out.
MEANT = {
    # A document job carries the version it embeds; the write-back and a failure
    # apply only to that version (no stale vectors).
    # Interactive document edits are claimed ahead of bulk imports (issue 16, migration
    # 20261202080000); an answer job is always someone waiting.
    (EMBEDDINGS, "claim"): [r"returning j\.id, j\.{key}, j\.content_version, j\.attempts",
                            r"(?<=order by )q\.priority, "],
    # `suparag ask` claims the one question it just inserted.
    (ANSWERS, "claim"): [r"and \({keys} is null or q\.{key} = any\({keys}\)\)",
                         r"returning j\.id, j\.{key}, j\.attempts"],
    (EMBEDDINGS, "fail"): [r"where j\.id = job_id and j\.content_version = claimed_version"],
    (ANSWERS, "fail"): [r"where j\.id = job_id"],
}


def definition(conn, name: str) -> str:
    row = conn.execute(
        "select pg_get_functiondef(p.oid) as def from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'suparag_private' and p.proname = %s", (name,)).fetchone()
    assert row is not None, name
    return row["def"]


def normalised(text: str, queue) -> str:
    for noun, placeholder in sorted(NOUNS[queue].items(), key=lambda kv: -len(kv[0])):
        text = text.replace(noun, placeholder)
    return " ".join(text.split())


def segment(text: str, start: str, end: str) -> str:
    """The part of text from the first `start` up to (not including) the next `end`."""
    match = re.search(re.escape(start) + ".*?(?=" + re.escape(end) + ")", text)
    assert match is not None, (start, text)
    return match.group()


def without_meant(text: str, queue, function: str) -> str:
    for pattern in MEANT.get((queue, function), []):
        text, count = re.subn(pattern, "", text)
        assert count, f"listed difference no longer there: {pattern}"
    return " ".join(text.split())


# What each pair of functions must do alike: the function of each queue, the
# part of its body compared, and a phrase that part must hold.
FUNCTIONS = {
    # Due, unleased, oldest first, `for update skip locked`, a lease and one attempt.
    "claim": (("claim_embedding_jobs", "claim_answer_jobs"),
              ("update suparag_private.{jobs} j", "$function$"), "for update skip locked"),
    # The same status, backoff and lease release on failure.
    "fail": (("fail_embedding_job", "fail_answer_job"),
             ("update suparag_private.{jobs} j set status", " returning"),
             "when j.attempts >= max_attempts then 'failed'"),
    # Requeue failed jobs with their attempts reset.
    "retry": (("retry_embedding_jobs", "retry_answer_jobs"),
              ("update suparag_private.{jobs} j", " returning"), "where j.status = 'failed'"),
}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_the_queue_functions_are_the_same_but_for_their_nouns(conn, function):
    names, (start, end), phrase = FUNCTIONS[function]
    shared = []
    for queue, name in zip((EMBEDDINGS, ANSWERS), names, strict=True):
        body = segment(normalised(definition(conn, name), queue), start, end)
        shared.append(without_meant(body, queue, function))
    assert shared[0] == shared[1]
    assert phrase in shared[0]


@pytest.mark.parametrize("column", ["status", "attempts", "run_after", "leased_by",
                                    "leased_until", "last_error", "created_at", "updated_at"])
def test_the_queue_tables_share_their_columns(conn, column):
    rows = conn.execute(
        "select c.relname as t, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull,"
        " pg_get_expr(d.adbin, d.adrelid) as default"
        " from pg_attribute a join pg_class c on c.oid = a.attrelid"
        " left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum"
        " where c.relnamespace = 'suparag_private'::regnamespace and c.relname = any(%s)"
        " and a.attname = %s", ([EMBEDDINGS.table, ANSWERS.table], column)).fetchall()
    assert len(rows) == 2
    assert {k: v for k, v in rows[0].items() if k != "t"} == \
        {k: v for k, v in rows[1].items() if k != "t"}


def test_the_claim_indexes_and_checks_are_the_same(conn):
    def shape(queue):
        index = conn.execute(
            "select pg_get_indexdef(i.indexrelid) as def from pg_index i"
            " join pg_class c on c.oid = i.indexrelid where c.relname = %s",
            (f"{queue.table}_claim_idx",)).fetchone()
        checks = conn.execute(
            "select pg_get_constraintdef(oid) as def from pg_constraint"
            " where conrelid = ('suparag_private.' || %s)::regclass and contype = 'c'",
            (queue.table,)).fetchall()
        assert index is not None
        return (normalised(index["def"], queue).replace(f"{queue.table}_claim_idx", ""),
                sorted(c["def"] for c in checks))

    assert shape(EMBEDDINGS) == shape(ANSWERS)


def test_each_trigger_notifies_its_queue_channel(conn):
    """The channel the worker listens on is the one the enqueue trigger notifies."""
    for queue, trigger in ((EMBEDDINGS, "enqueue_embedding"), (ANSWERS, "enqueue_answer")):
        assert f"pg_notify('{queue.channel}'" in definition(conn, trigger)
