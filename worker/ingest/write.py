"""Stage 4: the batched upsert into public.documents on (owner_id, source), and the
run's report.

One statement per batch reads each document's prior `content_version` and
upserts only rows whose title, content, metadata, team or visibility differ, so
unchanged documents are not written (the enqueue trigger queues nothing for
them) and created / updated / unchanged / queued can be told apart. Rows its
snapshot shows unchanged are left out of the INSERT, so a re-run does not lock
them (ON CONFLICT DO UPDATE locks every conflicting row, updated or not) while
a worker writes their embeddings back. A batch PostgreSQL aborts to break a
deadlock with a worker's write-back runs again, up to DEADLOCK_ATTEMPTS times.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.ingest.items import Document, Note, Skipped
from worker.ingest.target import Target

#: Documents per transaction; a batch also ends once it holds this much text.
BATCH_SIZE = 50
BATCH_CHARS = 8 * 1024 * 1024
#: Tries of a batch that PostgreSQL chose as a deadlock's victim.
DEADLOCK_ATTEMPTS = 3


@dataclass(frozen=True)
class Written:
    """One document's outcome: created, updated or unchanged."""

    source: str
    id: uuid.UUID
    outcome: str
    queued: bool


@dataclass
class IngestReport:
    """Everything one run did, for the summary."""

    files: int = 0
    documents: list[Written] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for d in self.documents if d.outcome == outcome)

    @property
    def queued(self) -> int:
        """Documents that got an embedding job (new or changed title/content)."""
        return sum(1 for d in self.documents if d.queued)

    def as_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "created": self.count("created"),
            "updated": self.count("updated"),
            "unchanged": self.count("unchanged"),
            "skipped": len(self.skipped),
            "queued": self.queued,
            "documents": [
                {"source": d.source, "id": str(d.id), "outcome": d.outcome, "queued": d.queued}
                for d in self.documents
            ],
            "skipped_items": [{"source": s.source, "reason": s.reason} for s in self.skipped],
            "warnings": [{"source": n.source, "message": n.message} for n in self.notes],
        }


_UPSERT = """
with input as (
  select * from unnest(%(sources)s::text[], %(titles)s::text[], %(contents)s::text[],
                       %(metadata)s::jsonb[]) as i(source, title, content, metadata)
),
prior as (
  select d.id, d.source, d.content_version, d.title, d.content, d.metadata, d.team,
         d.visibility
  from public.documents d
  where d.owner_id = %(owner)s and d.source in (select source from input)
),
written as (
  insert into public.documents as d
    (owner_id, team, visibility, source, title, content, metadata)
  select %(owner)s, %(team)s, %(visibility)s, i.source, i.title, i.content, i.metadata
  from input i
  where not exists (  -- unchanged in this snapshot: not even locked
    select from prior p
    where p.source = i.source and (p.title, p.content, p.metadata, p.team, p.visibility)
          is not distinct from (i.title, i.content, i.metadata, %(team)s, %(visibility)s))
  on conflict (owner_id, source) where source is not null do update
    set title = excluded.title, content = excluded.content, metadata = excluded.metadata,
        team = excluded.team, visibility = excluded.visibility
    where (d.title, d.content, d.metadata, d.team, d.visibility)
          is distinct from (excluded.title, excluded.content, excluded.metadata,
                            excluded.team, excluded.visibility)
  returning d.id, d.source, d.content_version
)
select i.source, coalesce(w.id, p.id) as id, p.content_version as before,
       w.content_version as after
from input i
left join prior p on p.source = i.source
left join written w on w.source = i.source
"""

#: Rows a concurrent transaction committed after the upsert's snapshot: the upsert
#: waited for it, found nothing to change and so returned no id. Read in a statement
#: of its own, whose snapshot sees that commit.
_COMMITTED_MEANWHILE = """
select d.source, d.id, d.content_version from public.documents d
where d.owner_id = %(owner)s and d.source = any(%(sources)s::text[])
"""


def _write(conn: psycopg.Connection[Any], batch: list[Document], target: Target,
           report: IngestReport) -> None:
    """Upsert one batch in one transaction (so one wake-up for the workers).

    The batch's jobs are bulk work: an edit committed meanwhile is embedded first
    (`suparag.bulk`, migration 20261202080000; issue 16).
    """
    params = {
        "owner": target.owner.id,
        "team": target.team,
        "visibility": target.visibility,
        "sources": [d.source for d in batch],
        "titles": [d.title for d in batch],
        "contents": [d.content for d in batch],
        "metadata": [Jsonb({**target.metadata, **d.metadata}) for d in batch],
    }
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            conn.execute("select set_config('suparag.bulk', 'on', true)")
            rows = conn.execute(_UPSERT, params).fetchall()
            break
        except psycopg.errors.DeadlockDetected:
            # A worker's write-back locks the batch's changed rows in another order;
            # PostgreSQL rolled this transaction back, so it can run again whole.
            conn.rollback()
            if attempt == DEADLOCK_ATTEMPTS:
                raise
    missing = [row["source"] for row in rows if row["id"] is None]
    if missing:
        found = {r["source"]: r for r in conn.execute(
            _COMMITTED_MEANWHILE, {"owner": target.owner.id, "sources": missing})}
        for i, row in enumerate(rows):
            committed = found.get(row["source"]) if row["id"] is None else None
            if committed is not None:  # unchanged: what it is now is what it was before
                rows[i] = {**row, "id": committed["id"], "before": committed["content_version"]}
    conn.commit()
    for row in rows:
        if row["id"] is None:  # deleted again by a third transaction meanwhile
            report.skipped.append(Skipped(row["source"], "deleted by another transaction "
                                                         "while this one wrote it"))
            continue
        if row["before"] is None:
            outcome, queued = "created", True
        elif row["after"] is None:
            outcome, queued = "unchanged", False
        else:
            outcome, queued = "updated", row["after"] != row["before"]
        report.documents.append(Written(row["source"], row["id"], outcome, queued))



class Batches:
    """Collects documents and upserts them for target once a batch is full, into report."""

    def __init__(self, conn: psycopg.Connection[Any], target: Target, report: IngestReport,
                 *, batch_size: int = BATCH_SIZE) -> None:
        self.conn = conn
        self.target = target
        self.report = report
        self.batch_size = batch_size
        self.batch: list[Document] = []
        self.chars = 0

    def add(self, doc: Document) -> None:
        self.batch.append(doc)
        self.chars += len(doc.content)
        if len(self.batch) >= self.batch_size or self.chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        """Write what is collected (nothing if empty)."""
        if self.batch:
            _write(self.conn, self.batch, self.target, self.report)
            self.batch, self.chars = [], 0
