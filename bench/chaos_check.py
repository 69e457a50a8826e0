"""The chaos bench's checker: what the database must hold once the queue has drained.

It trusts nothing the worker wrote. It reads every document as `postgres`,
chunks its current title and content again with the same chunker and
tokenizer rules the workers use, and recomputes each chunk's vector with the
double's rule (`bench.embedding_double.expected_vector`). A violation is one
line saying which document broke which rule.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.embedding_double import expected_vector
from worker.jobs.chunking import Chunk, chunk_document
from worker.models.base import Embedder

Conn = Any  # psycopg.Connection[dict[str, Any]]

#: A stored vector must be this close to the expected one (float32 storage costs ~1e-7).
MIN_COSINE = 0.9999


@dataclass
class CheckResult:
    """What the checker saw, and every rule it found broken."""

    live: int = 0
    ready: int = 0
    failed: int = 0
    failed_errors: list[str] = field(default_factory=list)
    chunks_checked: int = 0
    deleted_checked: int = 0
    frozen_texts_checked: int = 0
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"live": self.live, "ready": self.ready, "failed": self.failed,
                "failed_errors": self.failed_errors[:10], "chunks_checked": self.chunks_checked,
                "deleted_checked": self.deleted_checked,
                "frozen_texts_checked": self.frozen_texts_checked,
                "violations": self.violations}


def chunks_of(chunker: Embedder, title: str, content: str) -> list[Chunk]:
    """What the worker's chunker makes of a document, with chunker's token rules."""
    return chunk_document(title, content, max_tokens=chunker.max_tokens,
                          count_tokens=chunker.count_tokens, split_tokens=chunker.split_tokens)


def check(conn: Conn, chunker: Embedder, *, model: str, max_attempts: int,
          deleted: Collection[uuid.UUID] = (),
          frozen: Mapping[str, int] | None = None,
          calls: Callable[[str], int] | None = None) -> CheckResult:
    """Check the drained database; see the module docstring.

    deleted: ids the driver deleted (no row, no chunk may remain). frozen: the
    embedding texts of documents that only had metadata edits, with the calls
    the double had counted for each before those edits; calls(text) is its
    count now, which must not have grown.
    """
    result = CheckResult()
    bad = result.violations
    docs = conn.execute(
        "select id, title, content, content_version, embedding_status, embedding_model,"
        " embedding_error from public.documents order by id").fetchall()
    chunks: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in conn.execute(
            "select document_id, chunk_index, content, embedding, embedding_model"
            " from public.document_chunks order by document_id, chunk_index"):
        chunks.setdefault(row["document_id"], []).append(row)
    jobs = {row["document_id"]: row for row in conn.execute(
        "select document_id, content_version, status, attempts, leased_by, leased_until,"
        " last_error from suparag_private.embedding_jobs")}
    live_ids = {d["id"] for d in docs}
    result.live = len(docs)
    for doc in docs:
        doc_id, status = doc["id"], doc["embedding_status"]
        job = jobs.get(doc_id)
        if status == "failed":
            result.failed += 1
            result.failed_errors.append(f"{doc_id}: {doc['embedding_error']}")
            if job is None or job["status"] != "failed" or job["attempts"] < max_attempts:
                bad.append(f"document {doc_id} is failed but its job is "
                           f"{_describe_job(job)}, not failed after {max_attempts} attempts")
            continue
        if status != "ready":
            bad.append(f"document {doc_id} is {status} after the drain "
                       f"(job: {_describe_job(job)})")
            continue
        result.ready += 1
        if job is not None:
            bad.append(f"document {doc_id} is ready but still has a job: {_describe_job(job)}")
        if doc["embedding_model"] != model:
            bad.append(f"document {doc_id} is ready with model {doc['embedding_model']!r}, "
                       f"expected {model!r}")
        _check_chunks(doc, chunks.get(doc_id, []), chunker, model, result)
    for doc_id in chunks.keys() - live_ids:
        bad.append(f"{len(chunks[doc_id])} chunks of document {doc_id}, which has no row")
    for doc_id in deleted:
        result.deleted_checked += 1
        if doc_id in live_ids:
            continue  # the delete did not commit (the database restarted under it)
        if doc_id in chunks:
            bad.append(f"deleted document {doc_id} still has {len(chunks[doc_id])} chunks")
    for job in jobs.values():
        if job["leased_by"] is not None or job["leased_until"] is not None:
            bad.append(f"job of document {job['document_id']} left leased: {_describe_job(job)}")
        if job["status"] == "queued":
            bad.append(f"job of document {job['document_id']} still queued after the drain")
    if frozen is not None and calls is not None:
        for text, before in frozen.items():
            result.frozen_texts_checked += 1
            now = calls(text)
            if now != before:
                bad.append(f"a metadata-only edit caused {now - before} embedding calls for "
                           f"{text[:60]!r}")
    return result


def _check_chunks(doc: dict[str, Any], stored: list[dict[str, Any]], chunker: Embedder,
                  model: str, result: CheckResult) -> None:
    """A ready document's chunks against the chunker's output and the expected vectors."""
    bad, doc_id = result.violations, doc["id"]
    expected = chunks_of(chunker, doc["title"], doc["content"])
    if [c["chunk_index"] for c in stored] != [c.index for c in expected]:
        bad.append(f"document {doc_id} has chunks {[c['chunk_index'] for c in stored]}, "
                   f"the chunker makes {len(expected)} of its current text")
        return
    for row, chunk in zip(stored, expected, strict=True):
        result.chunks_checked += 1
        where = f"document {doc_id} chunk {chunk.index}"
        if row["content"] != chunk.content:
            bad.append(f"{where}: its text is not the chunker's output for the current version")
            continue
        if row["embedding_model"] != model:
            bad.append(f"{where}: model {row['embedding_model']!r}, expected {model!r}")
        if row["embedding"] is None:
            bad.append(f"{where}: no vector")
            continue
        vector = np.asarray(row["embedding"].to_list(), dtype=np.float64)
        want = expected_vector(chunk.embed_text, len(vector))
        norm = float(np.linalg.norm(vector))
        cosine = float(vector @ want) / norm if norm else 0.0
        if cosine < MIN_COSINE:
            bad.append(f"{where}: vector cosine {cosine:.5f} to its text's vector "
                       f"(< {MIN_COSINE})")


def _describe_job(job: dict[str, Any] | None) -> str:
    if job is None:
        return "none"
    return (f"{job['status']} v{job['content_version']}, {job['attempts']} attempts, "
            f"leased_by={job['leased_by']}, last_error={job['last_error']!r}")
