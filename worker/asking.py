"""Asking a question as a user and waiting for its answer: what `suparag ask` and the demo do.

The question is inserted into public.questions as the user (as the API
would), then answered in this process by an AnswerWorker that claims only
that question: retrieval runs as the user. If a running `suparag worker`
claims it first, its answer row is followed instead, read as the user.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.db import as_request
from worker.jobs.answering import AnswerWorker
from worker.models.base import LLM, Embedder
from worker.users import User

_INSERT = """
    insert into public.questions (conversation_id, question, filter, match_count)
    values (coalesce(%s, gen_random_uuid()), %s, %s, %s)
    returning id, conversation_id
"""

_ANSWER = """
    select status, mode, model, content, citations, error
    from public.answers where question_id = %s
"""


@dataclass(frozen=True)
class Asked:
    """A question and its answer row as the asker reads it (None: no answer yet)."""

    question_id: uuid.UUID
    conversation_id: uuid.UUID
    answer: dict[str, Any] | None

    @property
    def done(self) -> bool:
        return self.answer is not None and self.answer["status"] == "done"


def read_answer(conn: psycopg.Connection[Any], claims: Mapping[str, Any],
                question_id: uuid.UUID) -> dict[str, Any] | None:
    """The answer row to question_id, read as the asker (claims)."""
    with as_request(conn, claims):
        row = conn.execute(_ANSWER, (question_id,)).fetchone()
    return dict(row) if row is not None else None


def ask(conn: psycopg.Connection[Any], db_url: str, embedder: Embedder, user: User,
        question: str, *, llm: LLM | None = None, conversation_id: uuid.UUID | None = None,
        metadata_filter: Mapping[str, Any] | None = None, k: int = 5,
        on_text: Callable[[str], None] | None = None, timeout: float = 300.0) -> Asked:
    """Ask question as user, answer it here (or follow a running worker's answer).

    `on_text` receives the answer's text as it grows (deltas). Returns once the
    answer is done or failed, or after `timeout` seconds with what there is.
    """
    with as_request(conn, user.claims()):
        row = conn.execute(_INSERT, (conversation_id, question,
                                     Jsonb(dict(metadata_filter or {})), k)).fetchone()
    assert row is not None
    question_id = row["id"]
    worker = AnswerWorker(db_url, embedder, llm=llm)
    try:
        claimed = worker.run_batch(question_ids=[question_id], on_text=on_text)
    finally:
        worker.close()
    answer = read_answer(conn, user.claims(), question_id)
    if claimed.claimed == 0:
        # A running worker holds it: follow its answer row, as the user.
        answer = _follow(conn, user, question_id, on_text, timeout)
    return Asked(question_id, row["conversation_id"], answer)


def _follow(conn: psycopg.Connection[Any], user: User, question_id: uuid.UUID,
            on_text: Callable[[str], None] | None, timeout: float) -> dict[str, Any] | None:
    """Poll the answer row until it is done or failed, passing on the text that is new."""
    deadline = time.monotonic() + timeout
    seen = 0
    answer = None
    while time.monotonic() < deadline:
        answer = read_answer(conn, user.claims(), question_id)
        if answer is not None:
            if on_text is not None and len(answer["content"]) > seen:
                on_text(answer["content"][seen:])
            seen = len(answer["content"])
            if answer["status"] in ("done", "failed"):
                break
        time.sleep(0.2)
    return answer
