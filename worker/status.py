"""What the embedding pipeline is doing: documents by status, the queue, failures, models.

Operator queries: they read suparag_private, so they run on the service
connection (the database URL's own role), never as an API user. Retrying goes
through `suparag_private.retry_embedding_jobs`, which requeues and wakes the
workers in one statement.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from worker.errors import NotFound

#: Every value of documents.embedding_status, in pipeline order.
EMBEDDING_STATUSES = ("pending", "ready", "failed")


@dataclass(frozen=True)
class ModelUsage:
    """One embedding model with stored vectors."""

    model: str
    chunks: int
    documents: int


@dataclass(frozen=True)
class QueueStatus:
    """Embedding jobs by state.

    `due`: a worker may claim them now; `leased`: a worker holds them;
    `backoff`: waiting out the delay after a failed attempt; `failed`: out of
    attempts, waiting for `suparag jobs retry`.
    """

    due: int
    leased: int
    backoff: int
    failed: int
    oldest_pending_since: datetime | None
    oldest_pending_seconds: float | None

    @property
    def depth(self) -> int:
        """Jobs still to be done (failed ones excluded: they wait for an operator)."""
        return self.due + self.leased + self.backoff


@dataclass(frozen=True)
class PipelineStatus:
    """The answer to `suparag status`."""

    documents: dict[str, int]
    queue: QueueStatus
    models: list[ModelUsage]

    def to_json(self) -> dict[str, Any]:
        return {
            "documents": {**self.documents, "total": sum(self.documents.values())},
            "queue": {"depth": self.queue.depth, **asdict(self.queue)},
            "models": [asdict(m) for m in self.models],
        }


@dataclass(frozen=True)
class FailedJob:
    """A document whose embedding job ran out of attempts."""

    document_id: uuid.UUID
    title: str
    attempts: int
    last_error: str | None
    failed_at: datetime


def models_in_use(conn: psycopg.Connection[Any]) -> list[ModelUsage]:
    """The models that made the stored vectors, most chunks first."""
    with conn.transaction():
        rows = conn.execute(
            "select embedding_model as model, count(*) as chunks,"
            " count(distinct document_id) as documents"
            " from public.document_chunks where embedding is not null"
            " group by embedding_model order by count(*) desc, embedding_model"
        ).fetchall()
    return [ModelUsage(**row) for row in rows]


def models_stored(conn: psycopg.Connection[Any]) -> list[ModelUsage]:
    """models_in_use, and the models of the table spaces (issue 10) not among them: what
    `suparag status` lists, so a corpus whose first space was dropped still shows its."""
    found = models_in_use(conn)
    with conn.transaction():
        rows = conn.execute(
            "select s.model, count(*) as chunks, count(distinct v.document_id) as documents"
            " from suparag_search.chunk_vectors v"
            " join suparag_private.embedding_spaces s on s.id = v.space_id"
            " group by s.model order by count(*) desc, s.model").fetchall()
    known = {usage.model for usage in found}
    return found + [ModelUsage(**row) for row in rows if row["model"] not in known]


def pipeline_status(conn: psycopg.Connection[Any]) -> PipelineStatus:
    """Documents by embedding status, the queue, and the models in use."""
    with conn.transaction():
        counted = conn.execute(
            "select embedding_status as status, count(*) as n from public.documents"
            " group by embedding_status"
        ).fetchall()
        queue = conn.execute(
            """
            select
              count(*) filter (where status = 'queued' and run_after <= now()
                               and (leased_until is null or leased_until < now())) as due,
              count(*) filter (where status = 'queued' and leased_until >= now()) as leased,
              count(*) filter (where status = 'queued' and run_after > now()
                               and (leased_until is null or leased_until < now())) as backoff,
              count(*) filter (where status = 'failed') as failed,
              -- created_at survives re-enqueueing: the time since the document
              -- last had no pending work.
              min(created_at) filter (where status = 'queued') as oldest_pending_since,
              extract(epoch from now() - min(created_at) filter (where status = 'queued'))::float8
                as oldest_pending_seconds
            from suparag_private.embedding_jobs
            """
        ).fetchone()
    assert queue is not None
    documents = dict.fromkeys(EMBEDDING_STATUSES, 0)
    documents.update({row["status"]: row["n"] for row in counted})
    return PipelineStatus(documents=documents, queue=QueueStatus(**queue),
                          models=models_stored(conn))


def failed_jobs(conn: psycopg.Connection[Any]) -> list[FailedJob]:
    """Jobs out of attempts, most recent failure first."""
    with conn.transaction():
        rows = conn.execute(
            "select j.document_id, d.title, j.attempts, j.last_error, j.updated_at as failed_at"
            " from suparag_private.embedding_jobs j"
            " join public.documents d on d.id = j.document_id"
            " where j.status = 'failed'"
            " order by j.updated_at desc, j.document_id"
        ).fetchall()
    return [FailedJob(**row) for row in rows]


def retry_failed(conn: psycopg.Connection[Any], document_ids: Sequence[str] | None) -> int:
    """Requeue the failed jobs of these documents (None: every failed job); how many.

    All or nothing: an id without a failed job requeues none of them.
    """
    with conn.transaction():
        if document_ids is None:
            row = conn.execute(
                "select suparag_private.retry_embedding_jobs() as n").fetchone()
        else:
            ids = [_document_id(value) for value in document_ids]
            known = {
                r["document_id"] for r in conn.execute(
                    "select document_id from suparag_private.embedding_jobs"
                    " where status = 'failed' and document_id = any(%s) for update",
                    (ids,),
                )
            }
            missing = [str(i) for i in ids if i not in known]
            if missing:
                raise NotFound(
                    f"no failed embedding job for document {', '.join(missing)}: "
                    "`suparag jobs failed` lists the ones that can be retried"
                )
            row = conn.execute(
                "select suparag_private.retry_embedding_jobs(%s::uuid[]) as n", (ids,)
            ).fetchone()
    assert row is not None
    return int(row["n"])


def _document_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(
            f"{value!r} is not a document id: `suparag jobs failed` lists the ids to retry"
        ) from None
