"""The embedding worker: claim jobs, chunk, embed, write back, or fail with backoff.

The queue (suparag_private.embedding_jobs) is the truth; wake-ups only make a
worker look sooner. Each claimed document is written back in one transaction
that locks the document row, checks it still has the version that was
embedded, replaces its chunks and marks it ready. A newer version means the
result is dropped and the newer job, already queued, wins.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import psycopg

from worker.chunking import Chunk, chunk_document
from worker.db import connect
from worker.embedders import Embedder

log = logging.getLogger("suparag.embedding")

#: The width of document_chunks.embedding.
COLUMN_DIMENSIONS = 384


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
        """Exponential, capped, with full jitter (so failed jobs do not retry in lockstep)."""
        ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempts - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass
class BatchResult:
    """What one batch did."""

    embedded: int = 0
    superseded: int = 0
    failed: int = 0
    retrying: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0

    @property
    def claimed(self) -> int:
        return self.embedded + self.superseded + self.failed + self.retrying

    def add(self, other: BatchResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class EmbeddingJobError(Exception):
    """A document could not be embedded; the message is stored on the job."""


class EmbeddingWorker:
    """Drains the embedding queue of one database."""

    def __init__(self, db_url: str, embedder: Embedder, *,
                 config: WorkerConfig | None = None) -> None:
        self.db_url = db_url
        self.embedder = embedder
        self.config = config or WorkerConfig()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None

    @property
    def conn(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.db_url)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    # -- one batch ------------------------------------------------------------------------

    def run_batch(self) -> BatchResult:
        """Claim up to batch_size due jobs and finish each one; zero claimed means idle."""
        conn = self.conn
        with conn.transaction():
            jobs = conn.execute(
                "select * from suparag_private.claim_embedding_jobs(%s, %s, %s)",
                (self.config.worker_id, self.config.batch_size, self.config.lease_seconds),
            ).fetchall()
        result = BatchResult()
        for job in jobs:
            result.add(self._run_job(job))
        return result

    def drain(self, *, on_batch: Callable[[BatchResult], None] | None = None) -> BatchResult:
        """Run batches until nothing is due."""
        total = BatchResult()
        while True:
            batch = self.run_batch()
            if batch.claimed == 0:
                return total
            total.add(batch)
            if on_batch is not None:
                on_batch(batch)

    def _run_job(self, job: dict[str, Any]) -> BatchResult:
        try:
            return self._embed_and_write(job)
        except Exception as exc:  # any failure of one document must not stop the others
            if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.rollback()
            message = str(exc) if isinstance(exc, EmbeddingJobError) else \
                f"{type(exc).__name__}: {exc}"
            log.warning("document %s failed (attempt %s): %s", job["document_id"],
                        job["attempts"], message)
            with self.conn.transaction():
                outcome = self.conn.execute(
                    "select suparag_private.fail_embedding_job(%s, %s, %s, %s, %s) as outcome",
                    (job["job_id"], job["content_version"], message, self.config.max_attempts,
                     self.config.backoff(job["attempts"])),
                ).fetchone()
            status = outcome["outcome"] if outcome else None
            return BatchResult(failed=int(status == "failed"),
                               retrying=int(status == "queued"),
                               superseded=int(status is None))

    def _embed_and_write(self, job: dict[str, Any]) -> BatchResult:
        conn = self.conn
        model = self.embedder.name
        with conn.transaction():
            doc = conn.execute(
                "select title, content, content_version from public.documents where id = %s",
                (job["document_id"],),
            ).fetchone()
            reusable = {
                row["content_hash"]: row["embedding"]
                for row in conn.execute(
                    "select content_hash, embedding::text as embedding"
                    " from public.document_chunks"
                    " where document_id = %s and embedding_model = %s and embedding is not null",
                    (job["document_id"], model),
                )
            }
        if doc is None or doc["content_version"] != job["content_version"]:
            return self._superseded(job)

        chunks = self._chunk(doc["title"], doc["content"])
        hashes = [c.content_hash(model) for c in chunks]
        todo = [c for c, h in zip(chunks, hashes, strict=True) if h not in reusable]
        vectors = dict(zip((c.index for c in todo), self._embed(todo), strict=True))

        rows = [
            (job["document_id"], c.index, c.content,
             vectors[c.index] if c.index in vectors else reusable[h], model, h)
            for c, h in zip(chunks, hashes, strict=True)
        ]
        with conn.transaction():
            current = conn.execute(
                "select content_version from public.documents where id = %s for update",
                (job["document_id"],),
            ).fetchone()
            if current is None or current["content_version"] != job["content_version"]:
                # Changed while we embedded: drop the result; the newer job stands.
                return self._superseded(job, in_transaction=True)
            conn.execute("delete from public.document_chunks where document_id = %s",
                         (job["document_id"],))
            with conn.cursor().copy(
                "copy public.document_chunks (document_id, chunk_index, content, embedding,"
                " embedding_model, content_hash) from stdin"
            ) as copy:
                for row in rows:
                    vector = row[3]
                    text = vector if isinstance(vector, str) else \
                        "[" + ",".join(repr(x) for x in vector) + "]"
                    copy.write_row((*row[:3], text, *row[4:]))
            conn.execute(
                "update public.documents set embedding_status = 'ready', embedding_model = %s,"
                " embedded_at = now(), embedding_error = null where id = %s",
                (model, job["document_id"]),
            )
            conn.execute(
                "delete from suparag_private.embedding_jobs where id = %s and content_version = %s",
                (job["job_id"], job["content_version"]),
            )
        return BatchResult(embedded=1, chunks_embedded=len(todo),
                           chunks_reused=len(chunks) - len(todo))

    def _superseded(self, job: dict[str, Any], *, in_transaction: bool = False) -> BatchResult:
        """Release the lease so the job's newer version is picked up at once."""
        sql = ("update suparag_private.embedding_jobs set leased_by = null, leased_until = null"
               " where id = %s and leased_by = %s")
        if in_transaction:
            self.conn.execute(sql, (job["job_id"], self.config.worker_id))
        else:
            with self.conn.transaction():
                self.conn.execute(sql, (job["job_id"], self.config.worker_id))
        return BatchResult(superseded=1)

    def _chunk(self, title: str, content: str) -> list[Chunk]:
        # (PostgreSQL text cannot hold NUL bytes, so none reach this point.)
        return chunk_document(
            title, content,
            max_tokens=self.embedder.max_tokens,
            count_tokens=self.embedder.count_tokens,
            split_tokens=self.embedder.split_tokens,
        )

    def _embed(self, chunks: list[Chunk]) -> list[list[float]]:
        if not chunks:
            return []
        vectors = self.embedder.embed([c.embed_text for c in chunks])
        if vectors and len(vectors[0]) != COLUMN_DIMENSIONS:
            raise EmbeddingJobError(
                f"model {self.embedder.name} makes {len(vectors[0])}-dimensional vectors; "
                f"document_chunks.embedding holds {COLUMN_DIMENSIONS}. Use a "
                f"{COLUMN_DIMENSIONS}-dimension model (all-MiniLM-L6-v2, gte-small)."
            )
        return vectors
