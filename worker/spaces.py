"""Embedding spaces (issue 10): which exist, their embedders, coverage, add, activate, drop.

A space is (provider, model, dimensions, options); exactly one is active and
is what `match_documents` and `hybrid_search` search unless told otherwise.
The first space is `document_chunks.embedding` (storage "column"); every
later one keeps its vectors in `suparag_search.chunk_vectors` with its own
partial HNSW expression index (storage "table"), built here with CREATE INDEX
CONCURRENTLY so the live index keeps serving. The embedding worker keeps
every space current (`worker/jobs/embedding.py`) and fills a new one in the
background; `activate` is one transaction. See docs/spaces.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from worker.errors import ConfigError, NotFound, SpaceNotReady
from worker.evaluation.gate import check_activation
from worker.models.base import OPENAI_PREFIX, Embedder
from worker.models.factory import make_embedder
from worker.settings import Settings, get_settings

#: pgvector indexes `vector` up to this width with HNSW; wider spaces index `halfvec`.
VECTOR_INDEX_MAX = 2000
#: ... and `halfvec` up to this one.
HALFVEC_INDEX_MAX = 4000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Space:
    """One embedding space, as suparag_private.embedding_spaces holds it."""

    id: int
    name: str
    provider: str
    model: str
    dimensions: int
    storage: str  # "column" (document_chunks.embedding) or "table" (chunk_vectors)
    state: str  # "active", "live", or "dropped" (the column space only: its row is kept)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def index_name(self) -> str:
        """Its HNSW index in suparag_search (the column space's is document_chunks')."""
        if self.storage == "column":
            return "document_chunks_embedding_idx"
        return f"chunk_vectors_space_{self.id}_hnsw"

    @property
    def index_type(self) -> str:
        return "halfvec" if self.dimensions > VECTOR_INDEX_MAX else "vector"


@dataclass(frozen=True)
class Coverage:
    """How much of the corpus a space has vectors for."""

    space: Space
    chunks: int
    vectors: int
    index_ready: bool
    #: vectors written in the last RATE_WINDOW_S seconds (the backfill's and live edits')
    recent: int = 0
    failures: int = 0
    last_error: str | None = None

    @property
    def missing(self) -> int:
        """Chunks still to embed (none for a dropped space)."""
        if self.space.state == "dropped":
            return 0
        return max(self.chunks - self.vectors, 0)

    @property
    def rate(self) -> float:
        """Vectors written per second over the last minute."""
        return self.recent / RATE_WINDOW_S

    @property
    def eta_s(self) -> float | None:
        """Seconds until the space is full at the current rate (None: not moving)."""
        if not self.missing:
            return 0.0
        return self.missing / self.rate if self.rate > 0 else None

    @property
    def percent(self) -> float:
        return 100.0 if self.chunks == 0 else 100.0 * min(self.vectors, self.chunks) / self.chunks


#: Chunks whose column vector one transaction nulls when the column space is dropped.
COLUMN_NULL_BATCH = 1000
#: Passes over the chunks before vectors still arriving are blamed on an old worker.
COLUMN_NULL_PASSES = 3


#: The window `spaces status` measures the rate over.
RATE_WINDOW_S = 60.0

_COLUMNS = "id, name, provider, model, dimensions, storage, state, options"


def list_spaces(conn: psycopg.Connection[Any]) -> list[Space]:
    """Every space, the active one first, then in the order they were added."""
    rows = conn.execute(
        f"select {_COLUMNS} from suparag_private.embedding_spaces"
        " order by state = 'active' desc, id"
    ).fetchall()
    return [Space(**row) for row in rows]


def get_space(conn: psycopg.Connection[Any], name: str | None = None) -> Space:
    """The space called name (None: the active one)."""
    row = conn.execute(
        f"select {_COLUMNS} from suparag_private.embedding_spaces"
        " where (%(name)s::text is null and state = 'active') or name = %(name)s",
        {"name": name},
    ).fetchone()
    if row is None:
        raise NotFound(f"no embedding space named {name!r}: see `suparag spaces list`"
                       if name else "no embedding space is active: see `suparag spaces list`")
    return Space(**row)


def provider_of(model: str) -> str:
    """The provider of a stored model name: `openai/<model>` or sentence-transformers."""
    return "openai" if model.startswith(OPENAI_PREFIX) else "sentence-transformers"


def space_embedder(space: Space, settings: Settings | None = None) -> Embedder:
    """The embedder that makes this space's vectors (and embeds its queries)."""
    bare = space.model.removeprefix(OPENAI_PREFIX) if space.provider == "openai" else space.model
    dimensions = space.dimensions if space.provider == "openai" else None
    return make_embedder(space.provider, bare, settings=settings or get_settings(),
                         dimensions=dimensions)


def default_name(model: str, dimensions: int | None) -> str:
    """`text-embedding-3-small-1536` for openai/text-embedding-3-small at 1536."""
    base = re.sub(r"[^A-Za-z0-9._-]", "-", model.rsplit("/", 1)[-1]).strip("-._") or "space"
    return (f"{base}-{dimensions}" if dimensions else base)[:63]


def add_space(conn: psycopg.Connection[Any], model: str, *, dimensions: int | None = None,
              name: str | None = None, embedder: Embedder | None = None) -> Space:
    """Register a space and build its HNSW index without blocking the live one.

    conn must be in autocommit mode: CREATE INDEX CONCURRENTLY cannot run
    inside a transaction. Without dimensions, the model is asked for one
    vector to learn its width. The embedding worker then fills the space.
    """
    if not conn.autocommit:
        raise ConfigError("add_space needs an autocommit connection (CREATE INDEX CONCURRENTLY)")
    name = name or default_name(model, dimensions)
    if not _NAME.match(name):
        raise ConfigError(f"bad space name {name!r}: use letters, digits, '.', '_' and '-' "
                          "(at most 63), e.g. --name gte-small")
    if dimensions is None:
        probe = embedder or space_embedder(
            Space(0, name, provider_of(model), model, 0, "table", "live"))
        dimensions = len(probe.embed(["dimension probe"])[0])
    if not 1 <= dimensions <= HALFVEC_INDEX_MAX:
        raise ConfigError(f"{dimensions} dimensions: pgvector indexes at most "
                          f"{HALFVEC_INDEX_MAX} (halfvec); ask the model for fewer "
                          "with --dimensions")
    taken = conn.execute("select state from suparag_private.embedding_spaces where name = %s",
                         (name,)).fetchone()
    if taken and taken["state"] == "dropped":
        raise ConfigError(f"{name!r} names the first space, dropped (its row is kept): "
                          "choose another --name")
    if taken:
        raise ConfigError(f"an embedding space named {name!r} exists: choose another --name, "
                          f"or `suparag spaces drop {name}` first")
    row = conn.execute(
        "insert into suparag_private.embedding_spaces (name, provider, model, dimensions,"
        " options) values (%s, %s, %s, %s, %s) returning " + _COLUMNS,
        (name, provider_of(model), model, dimensions, Jsonb({})),
    ).fetchone()
    assert row is not None
    space = Space(**row)
    try:
        conn.execute(index_sql(space))
    except Exception:
        conn.execute(sql.SQL("drop index concurrently if exists suparag_search.{}").format(
            sql.Identifier(space.index_name)))
        conn.execute("delete from suparag_private.embedding_spaces where id = %s", (space.id,))
        raise
    # Wake the workers: an idle worker starts the backfill now, not at its next sweep.
    conn.execute("select pg_notify('suparag_embedding_jobs', '')")
    return space


def index_sql(space: Space) -> sql.Composed:
    """CREATE INDEX CONCURRENTLY of a table space's partial HNSW expression index."""
    # The cast and the predicate as literals: match_documents writes the same
    # expression, which is how the planner matches this partial index.
    kind = space.index_type
    return sql.SQL(
        "create index concurrently {index} on suparag_search.chunk_vectors using hnsw"
        " ((embedding::extensions.{kind}({dims})) extensions.{ops}) where space_id = {id}"
    ).format(index=sql.Identifier(space.index_name), kind=sql.SQL(kind),
             dims=sql.Literal(space.dimensions), ops=sql.SQL(f"{kind}_cosine_ops"),
             id=sql.Literal(space.id))


def coverage(conn: psycopg.Connection[Any], spaces: Sequence[Space] | None = None
             ) -> list[Coverage]:
    """Chunks, vectors and index state of each space (every space by default)."""
    spaces = list_spaces(conn) if spaces is None else spaces
    row = conn.execute("select count(*) as n from public.document_chunks").fetchone()
    chunks = row["n"] if row else 0
    found = []
    for space in spaces:
        window = {"window": RATE_WINDOW_S, "space": space.id}
        if space.storage == "column":
            got = conn.execute(
                "select count(*) as n, count(*) filter (where created_at > now()"
                " - make_interval(secs => %(window)s)) as recent from public.document_chunks"
                " where embedding is not null", window).fetchone()
        else:
            got = conn.execute(
                "select count(*) as n, count(*) filter (where written_at > now()"
                " - make_interval(secs => %(window)s)) as recent"
                " from suparag_search.chunk_vectors where space_id = %(space)s",
                window).fetchone()
        failed = conn.execute("select failures, last_error from suparag_private.embedding_spaces"
                              " where id = %s", (space.id,)).fetchone()
        ready = conn.execute(
            "select i.indisvalid and i.indisready as ok from pg_index i"
            " join pg_class c on c.oid = i.indexrelid"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where c.relname = %s and n.nspname = %s",
            (space.index_name, "public" if space.storage == "column" else "suparag_search"),
        ).fetchone()
        found.append(Coverage(space=space, chunks=chunks, vectors=got["n"] if got else 0,
                              index_ready=bool(ready and ready["ok"]),
                              recent=got["recent"] if got else 0,
                              failures=failed["failures"] if failed else 0,
                              last_error=failed["last_error"] if failed else None))
    return found


def activate(conn: psycopg.Connection[Any], name: str, *, force: bool = False) -> Space:
    """Make name the active space, in one transaction; refused below full coverage.

    Searches that started before the commit finish on the old space (their
    snapshot); every search after it uses the new one. The old space stays
    live, so rolling back is `activate OLD`. Refused below full coverage, and
    when the space's latest `suparag eval run` scores below the active space's on
    the same set (worker.evaluation.gate); force overrides both.
    """
    with conn.transaction():
        # One activation at a time; searches only read, so they never wait on this.
        conn.execute("lock table suparag_private.embedding_spaces in share row exclusive mode")
        space = get_space(conn, name)
        if space.active:
            return space
        if space.state == "dropped":
            raise SpaceNotReady(f"space {name} was dropped and its vectors are gone: add a "
                                "space for its model (`suparag spaces add`) to use it again")
        (cover,) = coverage(conn, [space])
        if not cover.index_ready:
            raise SpaceNotReady(f"space {name} has no valid index: drop it and add it again")
        if cover.missing and not force:
            raise SpaceNotReady(
                f"space {name} covers {cover.percent:.1f}% of chunks ({cover.missing} missing): "
                f"wait for the backfill (`suparag spaces status {name}`)"
            )
        current = get_space(conn)
        check_activation(conn, candidate=space.name, active=current.name, force=force)
        conn.execute("update suparag_private.embedding_spaces set state = 'live'"
                     " where state = 'active'")
        conn.execute("update suparag_private.embedding_spaces set state = 'active',"
                     " activated_at = now() where id = %s", (space.id,))
        return get_space(conn, name)


def drop_space(conn: psycopg.Connection[Any], name: str, *,
               progress: Callable[[int, int], None] | None = None,
               batch: int = COLUMN_NULL_BATCH) -> Space:
    """Remove a space that is not active: its index (concurrently), then its vectors.

    A table space's row is deleted and its vectors go with it. The first space
    (document_chunks.embedding) keeps its row as state 'dropped', so the column
    is never taken again, and is emptied in steps (drop_column_space); running
    this again on a dropped column space finishes what an interrupted run left.
    progress(nulled, total) reports the column's vectors as they are nulled.
    """
    if not conn.autocommit:
        raise ConfigError("drop_space needs an autocommit connection (DROP INDEX CONCURRENTLY)")
    space = get_space(conn, name)
    if space.active:
        raise ConfigError(f"space {name} is active: activate another space first")
    if space.storage == "column":
        return drop_column_space(conn, space, progress=progress, batch=batch)
    conn.execute(sql.SQL("drop index concurrently if exists suparag_search.{}").format(
        sql.Identifier(space.index_name)))
    with conn.transaction():
        # Re-check under the lock: an activation may have raced this drop.
        conn.execute("lock table suparag_private.embedding_spaces in share row exclusive mode")
        if get_space(conn, name).active:
            raise ConfigError(f"space {name} was activated meanwhile and is not dropped: "
                              "activate another space, then drop it again")
        conn.execute("delete from suparag_private.embedding_spaces where id = %s", (space.id,))
    return space


def drop_column_space(conn: psycopg.Connection[Any], space: Space, *,
                      progress: Callable[[int, int], None] | None = None,
                      batch: int = COLUMN_NULL_BATCH) -> Space:
    """Retire document_chunks.embedding (migration 20261203000000), in three steps.

    1. The row becomes 'dropped', taken FOR UPDATE: this waits for the embedding
       write-backs in flight (each holds the row FOR KEY SHARE while it writes), and
       every later write-back reads 'dropped' and writes chunks with no column
       vector. Searches that name the space are told it was dropped.
    2. Its HNSW index is dropped concurrently (reads and writes go on).
    3. Its vectors are nulled `batch` chunks a transaction: one update of every
       chunk would lock them all against the write-backs and double the table
       until vacuum.
    Each step is safe to repeat, so a run cut short is finished by running it again.
    """
    if space.state != "dropped":
        with conn.transaction():
            conn.execute(
                "lock table suparag_private.embedding_spaces in share row exclusive mode")
            row = conn.execute(
                "select state from suparag_private.embedding_spaces where id = %s for update",
                (space.id,)).fetchone()
            if row is None or row["state"] == "active":
                raise ConfigError(f"space {space.name} was activated meanwhile and is not "
                                  "dropped: activate another space, then drop it again")
            conn.execute("update suparag_private.embedding_spaces set state = 'dropped'"
                         " where id = %s", (space.id,))
    conn.execute(sql.SQL("drop index concurrently if exists public.{}").format(
        sql.Identifier(space.index_name)))
    row = conn.execute("select count(*) as n from public.document_chunks"
                       " where embedding is not null").fetchone()
    total, nulled = (row["n"] if row else 0), 0
    if progress is not None:
        progress(0, total)
    for _ in range(COLUMN_NULL_PASSES):
        after = 0
        while True:  # along the primary key, so no step scans the chunks already done
            ids = [r["id"] for r in conn.execute(
                "select id from public.document_chunks where id > %s order by id limit %s",
                (after, batch))]
            if not ids:
                break
            after = ids[-1]
            nulled += conn.execute(
                "update public.document_chunks set embedding = null"
                " where id = any(%s) and embedding is not null", (ids,)).rowcount
            if progress is not None:
                progress(min(nulled, total), total)
        # Write-backs after step 1 write no column vector, so none should be left.
        left = conn.execute("select exists (select 1 from public.document_chunks"
                            " where embedding is not null) as any").fetchone()
        if not (left and left["any"]):
            return replace(space, state="dropped")
    raise SpaceNotReady(
        f"space {space.name} is dropped but vectors keep arriving in "
        "document_chunks.embedding: an embedding worker older than this suparag is "
        "still running; upgrade or stop it, then run `suparag spaces drop` again")
