"""What both job queues share: their names, how a worker claims and retries, the drain loop.

There are two queues in `suparag_private`, one row per pending piece of work:
`embedding_jobs` (a document to embed, fed by the documents triggers) and
`answer_jobs` (a question to answer, fed by the questions trigger). Both are
claimed the same way (`for update skip locked` plus a lease, so any number of
workers share them), fail the same way (backoff, then `failed` at the cap) and
wake workers the same way (a NOTIFY on the queue's channel in the transaction
that queued the work). A `Queue` names one of them; a `QueueWorker` drains one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Protocol, Self, TypeVar

import psycopg
from psycopg import sql

from worker.backoff import backoff_seconds
from worker.db import connect

log = logging.getLogger("suparag.jobs")


@dataclass(frozen=True)
class Queue:
    """One job queue: its name, its table in suparag_private, and its NOTIFY channel."""

    #: What the CLI and the logs call it (`suparag worker --only NAME`).
    name: str
    #: The table in suparag_private.
    table: str
    #: The channel its enqueue trigger notifies (migrations 0100 and 0500 name it).
    channel: str
    #: Whether the table is in the supabase_realtime publication (migration 0600), so
    #: Realtime postgres_changes can wake its workers.
    realtime: bool = False
    #: Whether the worker's commits may return before the WAL is flushed (synchronous_commit
    #: off, a per-session setting any role may make). Safe where redoing a job is harmless:
    #: a commit lost in a database crash takes its claim, chunks, status and job deletion
    #: with it (one transaction), so the job's lease runs out and it is embedded again. An
    #: fsync per document was the embedding queue's wall (issue 17, `suparag bench queue`).
    asynchronous_commit: bool = False


EMBEDDINGS = Queue("embeddings", "embedding_jobs", "suparag_embedding_jobs", realtime=True,
                   asynchronous_commit=True)
ANSWERS = Queue("answers", "answer_jobs", "suparag_answer_jobs")
QUEUES = (EMBEDDINGS, ANSWERS)


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker claims and retries."""

    batch_size: int = 16
    lease_seconds: int = 300
    max_attempts: int = 5
    backoff_base_seconds: float = 2.0
    backoff_max_seconds: float = 600.0
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )

    def backoff(self, attempts: int) -> float:
        """Seconds before a job that failed its attempts-th time runs again."""
        return backoff_seconds(attempts, base=self.backoff_base_seconds,
                               cap=self.backoff_max_seconds)


class Tally(Protocol):
    """What a batch did: counts that add up, and how many jobs it claimed."""

    @property
    def claimed(self) -> int: ...

    def add(self, other: Self) -> None: ...


class Counts:
    """A Tally of int dataclass fields: `add` sums them field by field."""

    def add(self, other: Self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


TallyT = TypeVar("TallyT", bound=Tally)


class QueueWorker(Generic[TallyT]):
    """A worker of one queue: its own connection, and batches until nothing is due."""

    #: The queue this worker drains.
    queue: Queue

    def __init__(self, db_url: str, tally: Callable[[], TallyT], *,
                 config: WorkerConfig) -> None:
        self.db_url = db_url
        self.config = config
        self._tally = tally
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lane_conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lane = threading.local()
        #: How long the last claim took (set by run_batch), for the batch's log line.
        self.last_claim_seconds: float | None = None
        #: The count of wake-up hints this queue has had (worker.jobs.wakeups), set by the
        #: service when it has a source of them; None, or a count of None (the source is
        #: not connected): a drain asks the database about new interactive work between
        #: every two model calls.
        self.hints: Callable[[], int | None] | None = None

    @property
    def conn(self) -> psycopg.Connection[dict[str, Any]]:
        """The worker's connection; on a thread that called use_second_connection, its
        second one (one thread at a time uses each)."""
        if getattr(self._lane, "second", False):
            if self._lane_conn is None or self._lane_conn.closed:
                self._lane_conn = self._connect()
            return self._lane_conn
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def use_second_connection(self) -> None:
        """Have this thread use the worker's second connection (opened on first use), so
        its work never waits behind the first one's (worker/jobs/pipeline.py)."""
        self._lane.second = True

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        conn = connect(self.db_url)
        if self.queue.asynchronous_commit:
            conn.execute("set synchronous_commit = off")
            conn.commit()
        return conn

    def close(self) -> None:
        for conn in (self._conn, self._lane_conn):
            if conn is not None:
                conn.close()

    def load(self) -> None:
        """Load what the worker needs (a model) before it claims anything."""

    @property
    def model(self) -> str:
        """The model this worker uses, for logs and health."""
        raise NotImplementedError

    def new_tally(self) -> TallyT:
        return self._tally()

    def describe(self, batch: TallyT) -> str:
        """One log line for a batch."""
        return f"{self.queue.name}: " + ", ".join(f"{v} {k}" for k, v in vars(batch).items())

    def run_batch(self) -> TallyT:
        raise NotImplementedError

    def drain(self, *, on_batch: Callable[[TallyT], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> TallyT:
        """Run batches until nothing is due (or should_stop says so between batches)."""
        total = self._tally()
        while should_stop is None or not should_stop():
            batch = self.run_batch()
            if batch.claimed == 0:
                break
            total.add(batch)
            if on_batch is not None:
                on_batch(batch)
        return total

    def seconds_until_due(self) -> float | None:
        """Seconds until this queue's next backed-off job or expired lease falls due (None:
        nothing queued)."""
        with self.conn.transaction():
            row = self.conn.execute(
                sql.SQL(
                    "select extract(epoch from min(greatest(run_after,"
                    " coalesce(leased_until, run_after))) - now()) as wait"
                    " from suparag_private.{} where status = 'queued'"
                ).format(sql.Identifier(self.queue.table))
            ).fetchone()
        wait = row["wait"] if row else None
        return None if wait is None else float(wait)

    def record_failure(self, job: dict[str, Any], subject: str, message: str,
                       fail: str, params: tuple[Any, ...],
                       *, before: Callable[[], None] | None = None) -> str | None:
        """Back the job off or fail it at the cap, with the queue's SQL `fail` function.

        Returns the job's new status: 'queued' (to retry), 'failed', or None when
        the job changed or went meanwhile. `before` runs first, in the same
        transaction (e.g. to mark the answer row failed).
        """
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.rollback()
        log.warning("%s failed (attempt %s): %s", subject, job["attempts"], message)
        with self.conn.transaction():
            if before is not None:
                before()
            row = self.conn.execute(fail, params).fetchone()
        return row["outcome"] if row else None
