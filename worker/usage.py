"""Usage metering: what the workers' model calls cost, and answers worth training on.

Every model call a worker makes is one row of `suparag_private.usage`
(feature, model, tokens in and out, latency). This module writes those rows,
sums them per feature and model, and exports rated answers as chat-format
JSONL for fine-tuning. All of it is operator-only: the private schema is
closed to the API roles.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from worker.models.base import Embedder


@dataclass(frozen=True)
class UsageLine:
    """Totals for one (feature, model)."""

    feature: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    latency_ms_avg: float
    latency_ms_p95: float


def record(conn: psycopg.Connection[Any], *, feature: str, model: str, started: float,
           input_tokens: int = 0, output_tokens: int = 0,
           question_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None) -> None:
    """One usage row; `started` is the call's time.monotonic() at its start. Commits."""
    with conn.transaction():
        conn.execute(
            "insert into suparag_private.usage (feature, model, input_tokens, output_tokens,"
            " latency_ms, question_id, user_id) values (%s, %s, %s, %s, %s, %s, %s)",
            (feature, model, input_tokens, output_tokens,
             (time.monotonic() - started) * 1000, question_id, user_id),
        )


def summary(conn: psycopg.Connection[Any], *, since_days: float | None = None
            ) -> list[UsageLine]:
    """Calls, tokens and latency per feature and model (optionally the last since_days days)."""
    rows = conn.execute(
        """
        select feature, model, count(*)::integer as calls,
               coalesce(sum(input_tokens), 0)::integer as input_tokens,
               coalesce(sum(output_tokens), 0)::integer as output_tokens,
               avg(latency_ms)::float8 as latency_ms_avg,
               percentile_cont(0.95) within group (order by latency_ms)::float8
                 as latency_ms_p95
        from suparag_private.usage
        where %(since)s::float8 is null or at >= now() - make_interval(secs => %(since)s * 86400)
        group by feature, model
        order by feature, model
        """,
        {"since": since_days},
    ).fetchall()
    return [UsageLine(**row) for row in rows]


def training_examples(conn: psycopg.Connection[Any], *, min_feedback: int = 1
                      ) -> Iterator[dict[str, Any]]:
    """Finished answers rated at least min_feedback, as chat-format examples, oldest first.

    Each example is `{"messages": [user question, assistant answer], ...}`
    plus the ids, mode, model, feedback and citations, one per line of JSONL.
    """
    with conn.cursor(name="suparag_training_export") as cursor:
        cursor.execute(
            """
            select q.id as question_id, q.conversation_id, q.question, a.content, a.mode,
                   a.model, a.feedback, a.citations, a.updated_at
            from public.answers a
            join public.questions q on q.id = a.question_id
            where a.status = 'done' and a.feedback >= %s
            order by a.created_at, a.id
            """,
            (min_feedback,),
        )
        for row in cursor:
            yield {
                "messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": row["content"]}],
                "question_id": str(row["question_id"]),
                "conversation_id": str(row["conversation_id"]),
                "mode": row["mode"],
                "model": row["model"],
                "feedback": row["feedback"],
                "citations": row["citations"],
            }


def count_training_examples(conn: psycopg.Connection[Any], *, min_feedback: int = 1) -> int:
    row = conn.execute("select count(*)::integer as n from public.answers"
                       " where status = 'done' and feedback >= %s", (min_feedback,)).fetchone()
    return int(row["n"]) if row else 0


class MeteredEmbedder:
    """An Embedder that records each embed call (tokens, latency) as `feature` usage.

    The rows go through one connection kept open (not a new one per call: a
    connection costs a PostgreSQL backend's start, on the model's thread, for
    every model call; issue 16), committed asynchronously (a usage row lost
    in a database crash is a row of metering, not of data). Calls from
    several threads take turns on it.
    """

    def __init__(self, inner: Embedder, db_url: str, *, feature: str) -> None:
        self.inner = inner
        self.db_url = db_url
        self.feature = feature
        self.name = inner.name
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    def load(self) -> None:
        self.inner.load()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def split_tokens(self, text: str, size: int) -> list[str]:
        return self.inner.split_tokens(text, size)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        started = time.monotonic()
        vectors = self.inner.embed(texts)
        if texts:
            tokens = sum(self.inner.count_tokens(t) for t in texts)
            with self._lock:
                try:
                    record(self._connection(), feature=self.feature, model=self.name,
                           started=started, input_tokens=tokens)
                except psycopg.OperationalError:
                    self.close()  # the next call connects again
                    raise
        return vectors

    def close(self) -> None:
        """Close the metering connection (the next call opens another)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            from worker.db import connect

            self._conn = connect(self.db_url)
            self._conn.execute("set synchronous_commit = off")
            self._conn.commit()
        return self._conn
