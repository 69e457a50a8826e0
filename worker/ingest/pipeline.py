"""The run: each file found is decoded, read by its format, made storable, and upserted
in batches; what a file or record could not give is reported and the rest goes on."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import psycopg

from worker.documents import storable
from worker.ingest.decode import (
    DEFAULT_FALLBACK_ENCODING,
    DEFAULT_MAX_BYTES,
    Decoded,
    read_bytes,
    read_text,
)
from worker.ingest.discover import Discovery
from worker.ingest.formats import format_for
from worker.ingest.items import Document, Note, Parsed, Skipped, SourceFile
from worker.ingest.target import Target
from worker.ingest.write import BATCH_SIZE, Batches, IngestReport


def read_source(
    file: SourceFile,
    *,
    fallback_encoding: str = DEFAULT_FALLBACK_ENCODING,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> Parsed:
    """The documents in one file, or why it was skipped, plus notes on what was changed.

    progress(done, total) is called as a binary format goes (a PDF: once per page).
    """
    fmt = format_for(file.path)
    decoded: Decoded | None = None
    if fmt.read_binary is not None:
        data = read_bytes(file, max_bytes=max_bytes)
        if isinstance(data, Skipped):
            return Parsed(skipped=[data])
        read = fmt.read_binary(file, data, progress or _no_progress)
    else:
        assert fmt.read is not None
        text = read_text(file, fallback_encoding=fallback_encoding, max_bytes=max_bytes)
        if isinstance(text, Skipped):
            return Parsed(skipped=[text])
        decoded = text
        read = fmt.read(file, decoded.text)
    parsed = Parsed(skipped=read.skipped)
    if decoded is not None and decoded.note:
        parsed.notes.append(Note(file.source, decoded.note))
    parsed.notes.extend(read.notes)

    # What every format's documents record about the file; the file wins over a
    # record's own metadata.
    stamp: dict[str, Any] = {"format": fmt.name}
    if decoded is not None and decoded.encoding != "utf-8":
        stamp["encoding"] = decoded.encoding
    for doc in read.documents:
        stamped = {**doc.metadata, **stamp, "source": doc.source}
        # NULs past the first 8 KB, or from JSON escapes: PostgreSQL text cannot hold them.
        (title, content, metadata), removed = storable([doc.title, doc.content, stamped])
        parsed.documents.append(Document(doc.source, title, content, metadata))
        if removed:
            parsed.notes.append(Note(doc.source, f"removed {removed} NUL or invalid surrogate "
                                     "character(s), which PostgreSQL text cannot store"))
    return parsed


def ingest(
    conn: psycopg.Connection[Any],
    found: Discovery,
    target: Target,
    *,
    fallback_encoding: str = DEFAULT_FALLBACK_ENCODING,
    max_bytes: int = DEFAULT_MAX_BYTES,
    batch_size: int = BATCH_SIZE,
    on_file: Callable[[SourceFile], None] | None = None,
    on_progress: Callable[[SourceFile, int, int], None] | None = None,
) -> IngestReport:
    """Read every file found and upsert its documents for target, committing per batch.

    on_file(file) is called after each file; on_progress(file, done, total) within a
    file that reports its progress (a PDF, per page).
    """
    report = IngestReport(files=len(found.files), skipped=list(found.skipped))
    batches = Batches(conn, target, report, batch_size=batch_size)
    seen: dict[str, str] = {}
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    try:
        for file in found.files:
            progress = None if on_progress is None else \
                functools.partial(on_progress, file)
            parsed = read_source(file, fallback_encoding=fallback_encoding, max_bytes=max_bytes,
                                 progress=progress)
            report.skipped.extend(parsed.skipped)
            report.notes.extend(parsed.notes)
            for doc in parsed.documents:
                if doc.source in seen:
                    report.skipped.append(Skipped(
                        doc.source, f"duplicate source: {seen[doc.source]} already gave a "
                        "document of that name"))
                    continue
                seen[doc.source] = str(file.path)
                batches.add(doc)
            if on_file is not None:
                on_file(file)
        batches.flush()
    except BaseException:
        conn.rollback()
        raise
    return report


def _no_progress(done: int, total: int) -> None:
    """The progress callback when nobody is watching."""
