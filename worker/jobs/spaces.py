"""The embedding worker's part in embedding spaces (issue 10): live edits and the backfill.

The column space (document_chunks.embedding) is written by the worker's own
batch, as before, until it is dropped (then the worker's model only cuts the
chunks). Every other space (storage "table") is handled here:

* live edits: the chunks of each claimed document are embedded by every
  table space's model too (the active space first) and written in the same
  transaction as the chunks, so a document is current in every space at
  once. A failure of the active space's model fails the job; a failure of
  a standby space's model is logged and left to the backfill, so a broken
  standby never holds up the live corpus.
* backfill: chunks that have no vector in a space yet are embedded a fill
  at a time, only when no job is due (the worker claims jobs first), so it
  never starves edits. A fill goes through the worker's pipeline like a bulk
  batch (worker/jobs/pipeline.py): claimed and read while the model embeds
  the last one, its texts sorted by length into calls of the token budget,
  interactive work taken between those calls, written back while the model
  embeds the next. Their embedded text is rebuilt by chunking the document
  again with the worker's own chunker; a chunk whose document has changed
  since is skipped (its job rewrites it, with vectors in every space).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from worker.db import to_vector
from worker.errors import EmbeddingJobError
from worker.jobs.batching import model_calls
from worker.jobs.chunking import Chunk
from worker.models.base import Embedder
from worker.spaces import Space, space_embedder

log = logging.getLogger("suparag.spaces")

#: Vectors by space id, then by embedded text.
SpaceVectors = dict[int, dict[str, list[float]]]


class SpaceFiller:
    """Keeps the table spaces of one database current for an embedding worker."""

    def __init__(self, *, make: Callable[[Space], Embedder] = space_embedder,
                 batch: int = 256) -> None:
        self._make = make
        #: Chunks per fill: sorted by length together into calls of the worker's token
        #: budget, like a bulk claim (worker/jobs/batching.py).
        self.batch = batch
        self._embedders: dict[tuple[int, str, int], Embedder] = {}
        # Per space: the last chunk id the backfill looked at, so chunks it has to
        # skip (document changed, job pending) do not hold it up.
        self._after: dict[int, int] = {}
        # Per space: chunk ids claimed for a fill not yet written (the pipeline embeds one
        # fill while it claims the next).
        self._pending: dict[int, set[int]] = {}
        # Spaces whose last fill failed: left alone until the next wake-up (rest()).
        self._resting: set[int] = set()
        # Standby spaces' model failures seen by embed_in (the model's thread), counted
        # on the database's thread by record_failures.
        self._failed: list[tuple[Space, Exception]] = []

    def table_spaces(self, conn: psycopg.Connection[Any]) -> list[Space]:
        """The table spaces, the active one first (read fresh: spaces come and go)."""
        rows = conn.execute(
            "select id, name, provider, model, dimensions, storage, state, options"
            " from suparag_private.embedding_spaces where storage = 'table'"
            " order by state = 'active' desc, id"
        ).fetchall()
        return [Space(**row) for row in rows]

    @staticmethod
    def column_live(conn: psycopg.Connection[Any]) -> bool:
        """Whether the column space (document_chunks.embedding) still takes vectors."""
        row = conn.execute(
            "select exists (select 1 from suparag_private.embedding_spaces"
            " where storage = 'column' and state <> 'dropped') as live").fetchone()
        return bool(row and row["live"])

    def embedder(self, space: Space) -> Embedder:
        key = (space.id, space.model, space.dimensions)
        if key not in self._embedders:
            embedder = self._make(space)
            embedder.load()
            self._embedders[key] = embedder
        return self._embedders[key]

    def embed(self, space: Space, texts: Sequence[str], *,
              between: Callable[[], None] | None = None,
              budget: int | None = None) -> dict[str, list[float]]:
        """texts' vectors in space, checked against its width. Given between and a token
        budget, in model calls of that budget (sorted by length), between before each."""
        texts = list(dict.fromkeys(texts))
        if not texts:
            return {}
        embedder = self.embedder(space)
        if between is None or budget is None:
            vectors = embedder.embed(texts)
        else:
            vectors = [[] for _ in texts]
            for call in model_calls(texts, embedder.count_tokens, budget=budget):
                between()
                for i, vector in zip(call, embedder.embed([texts[i] for i in call]),
                                     strict=True):
                    vectors[i] = vector
        if vectors and len(vectors[0]) != space.dimensions:
            raise EmbeddingJobError(
                f"model {space.model} made {len(vectors[0])}-dimensional vectors; space "
                f"{space.name} holds {space.dimensions}: drop the space and add it again "
                "with the model's width"
            )
        return dict(zip(texts, vectors, strict=True))

    def embed_in(self, spaces: Sequence[Space], texts: Sequence[str], *,
                 between: Callable[[], None] | None = None, budget: int | None = None
                 ) -> tuple[SpaceVectors, Exception | None]:
        """texts in every table space (table_spaces(): active first); the error, if the
        active one failed. No database: the worker reads the spaces when it claims a batch.
        between and budget as for embed: the pipeline takes interactive work between the
        calls of a bulk batch in every space, not only the first."""
        found: SpaceVectors = {}
        for space in spaces:
            try:
                found[space.id] = self.embed(space, texts, between=between, budget=budget)
            except Exception as exc:
                if space.active:
                    return {}, exc
                log.warning("space %s: %s; the backfill will embed these chunks", space.name,
                            exc)
                self._failed.append((space, exc))  # counted by record_failures, on the DB side
        return found, None

    def record_failures(self, conn: psycopg.Connection[Any]) -> None:
        """Count the standby spaces' model failures that embed_in saw (it has no database)."""
        while True:
            try:  # both database threads of the pipeline may flush (worker/jobs/pipeline.py)
                space, exc = self._failed.pop(0)
            except IndexError:
                return
            try:
                self.record_failure(conn, space, exc)
            except psycopg.Error as error:  # a count for `spaces status`, never a job's failure
                log.warning("space %s: could not count a failure: %s", space.name, error)

    @staticmethod
    def record_failure(conn: psycopg.Connection[Any], space: Space, exc: Exception) -> None:
        """Count a model failure on the space, for `suparag spaces status`."""
        with conn.transaction():
            conn.execute(
                "update suparag_private.embedding_spaces set failures = failures + 1,"
                " last_error = %s, last_error_at = now() where id = %s",
                (f"{type(exc).__name__}: {exc}"[:500], space.id))

    @staticmethod
    def write(conn: psycopg.Connection[Any],
              documents: Sequence[tuple[Any, Sequence[Chunk], SpaceVectors]]) -> None:
        """The (just written) chunks' vectors in each space, for each (document id, chunks,
        vectors) of a write-back; inside its transaction."""
        wanted = [(doc, chunks, vectors) for doc, chunks, vectors in documents if vectors]
        if not wanted:
            return
        ids = {(row["document_id"], row["chunk_index"]): row["id"] for row in conn.execute(
            "select id, document_id, chunk_index from public.document_chunks"
            " where document_id = any(%s)", ([doc for doc, _, _ in wanted],))}
        rows = [(space_id, ids[doc, chunk.index], to_vector(by_text[chunk.embed_text]))
                for doc, chunks, vectors in wanted
                for space_id, by_text in vectors.items() for chunk in chunks
                if chunk.embed_text in by_text]
        with conn.cursor() as cur:
            cur.executemany(
                # The chunks are new (the write-back just replaced them), so a plain
                # insert: no upsert, which would need UPDATE, a right suparag_worker
                # has not (migration 20261202100000).
                "insert into suparag_search.chunk_vectors (space_id, chunk_id, embedding)"
                " values (%s, %s, %s)", rows)

    def rest(self) -> None:
        """A new wake-up: spaces whose backfill failed are tried again."""
        self._resting.clear()

    def claim(self, conn: psycopg.Connection[Any], chunk: Callable[[str, str], list[Chunk]],
              *, limit: int | None = None) -> Fill | None:
        """Up to limit chunks that a table space lacks (the first space with any), their
        embedded text rebuilt; None when no space lacks any (the database side).

        Chunks already in a fill that is not yet written are left out, so the pipeline
        can claim the next fill while the model embeds this one."""
        limit = limit or self.batch
        with conn.transaction():
            spaces = self.table_spaces(conn)
        for space in spaces:
            if space.id in self._resting:
                continue
            fill = self._claim_in(conn, space, chunk, limit)
            if fill is None and self._after.pop(space.id, None) is not None:
                fill = self._claim_in(conn, space, chunk, limit)  # wrap around once
            if fill is not None:
                self._pending.setdefault(space.id, set()).update(fill.texts)
                return fill
        return None

    def _claim_in(self, conn: psycopg.Connection[Any], space: Space,
                  chunk: Callable[[str, str], list[Chunk]], limit: int) -> Fill | None:
        while True:
            with conn.transaction():
                missing = conn.execute(
                    "select c.id, c.document_id, c.chunk_index, c.content"
                    " from public.document_chunks c"
                    " where c.id > %s and c.id <> all(%s)"
                    " and not exists (select 1 from suparag_search.chunk_vectors v"
                    "   where v.space_id = %s and v.chunk_id = c.id)"
                    " order by c.id limit %s",
                    (self._after.get(space.id, 0), list(self._pending.get(space.id, ())),
                     space.id, limit),
                ).fetchall()
                if not missing:
                    return None
                docs = {row["id"]: row for row in conn.execute(
                    "select id, title, content from public.documents where id = any(%s)",
                    (list({m["document_id"] for m in missing}),))}
            self._after[space.id] = missing[-1]["id"]
            texts: dict[int, str] = {}  # chunk id -> embedded text
            rechunked: dict[Any, dict[int, Chunk]] = {}
            for row in missing:
                doc = docs.get(row["document_id"])
                if doc is None:
                    continue
                if doc["id"] not in rechunked:
                    try:
                        rechunked[doc["id"]] = {c.index: c for c in
                                                chunk(doc["title"], doc["content"])}
                    except Exception:  # the document's job will fail or fix it
                        rechunked[doc["id"]] = {}
                again = rechunked[doc["id"]].get(row["chunk_index"])
                if again is not None and again.content == row["content"]:
                    texts[row["id"]] = again.embed_text
            if texts:
                return Fill(space=space, texts=texts, first=missing[0]["id"])
            # Every chunk read was stale (its document changed: its job rewrites it):
            # read on past them.

    def embed_fill(self, fill: Fill, *, between: Callable[[], None] | None = None,
                   budget: int | None = None) -> None:
        """The model's part of a fill (no database): its vectors, or the error."""
        try:
            fill.vectors = self.embed(fill.space, list(fill.texts.values()),
                                      between=between, budget=budget)
        except Exception as exc:
            fill.error = exc

    def write_fill(self, conn: psycopg.Connection[Any], fill: Fill) -> int:
        """Write an embedded fill's vectors (the database side); the number written."""
        space = fill.space
        try:
            if fill.error is not None:
                # Counted and shown by `suparag spaces status`; these chunks are tried
                # again at the worker's next wake-up (the space rests until then).
                log.warning("space %s: backfill failed: %s", space.name, fill.error)
                self.record_failure(conn, space, fill.error)
                self._resting.add(space.id)
                self._after[space.id] = fill.first - 1
                return 0
            try:
                with conn.transaction(), conn.cursor() as cur:
                    # Only chunks that still exist: a write-back may have replaced them.
                    cur.executemany(
                        "insert into suparag_search.chunk_vectors (space_id, chunk_id,"
                        " embedding) select %s, c.id, %s from public.document_chunks c"
                        " where c.id = %s on conflict (space_id, chunk_id) do nothing",
                        [(space.id, to_vector(fill.vectors[text]), chunk_id)
                         for chunk_id, text in fill.texts.items()])
            except psycopg.errors.ForeignKeyViolation:
                # A write-back deleted one of these chunks while we embedded: its
                # replacement came with vectors in every space. Look again next time.
                self._after.pop(space.id, None)
                return 0
            return len(fill.texts)
        finally:
            self._pending.get(space.id, set()).difference_update(fill.texts)


@dataclass
class Fill:
    """Chunks a space lacks, on their way through the backfill's stages."""

    space: Space
    texts: dict[int, str]  # chunk id -> embedded text
    first: int  # the first chunk id read (a failed fill is read again from there)
    vectors: dict[str, list[float]] = field(default_factory=dict)  # embedded text -> vector
    error: Exception | None = None
