"""What the database spends writing chunks back, index by index (issue 16).

    python -m bench.index_write [--docs 300] [--db-url URL] [--json]

The end-to-end rate of `suparag bench worker` is compared with the bare
model's, which writes nothing: the database's part of a write-back is work the
bare model never does, on the same cores. This bench measures that part.

--docs documents (as `bench worker` makes them, 1-14 paragraphs) are chunked
and embedded with the packaged model, as the worker chunks and embeds them.
Their chunk rows are then written, in one transaction with the worker's own
INSERT, into tables made `like public.document_chunks including all` (its
columns, the generated full-text column, its indexes), each already holding
the chunks of another --docs documents (the worker's warm-up in `bench
worker`, so the index is not empty):

- `hnsw+gin`: both of document_chunks' indexes besides the keys (the HNSW
  index on embedding, the GIN index on fts), as the worker writes;
- `gin`: the HNSW index dropped;
- `keys`: both dropped (the primary key and unique keys stay).

Each row of the report is the server backend's CPU seconds for the write (read
from /proc: the temporary embedded server, or with --db-url a server on this
machine; the tables are dropped afterwards), and per chunk; the HNSW index's share is
`hnsw+gin` less `gin`. The variants write in turn, then again in reverse
order into fresh tables, and each figure is the mean of the two.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any

from bench._common import (
    Doc,
    bench_database,
    emit,
    err_console,
    machine,
    make_documents,
    print_load,
)
from worker.db import connect, to_vector
from worker.errors import BenchError
from worker.jobs.chunking import chunk_document
from worker.models.base import DEFAULT_MODEL, Embedder
from worker.models.factory import make_embedder

VARIANTS = ("hnsw+gin", "gin", "keys")
#: Indexes each variant drops from its copy of document_chunks (LIKE names them this way).
_DROPPED = {"hnsw+gin": (), "gin": ("embedding",), "keys": ("embedding", "fts")}
_COLUMNS = "document_id, chunk_index, content, embedding, embedding_model, content_hash, page"


def chunk_rows(embedder: Embedder, docs: list[Doc]) -> list[tuple[Any, ...]]:
    """The chunk rows the worker would write for docs; each row's first value is its
    document's position in docs (_write makes it an id)."""
    rows: list[tuple[int, int, str, str]] = []
    texts: list[str] = []
    for position, doc in enumerate(docs):
        for chunk in chunk_document(doc.title, doc.content, max_tokens=embedder.max_tokens,
                                    count_tokens=embedder.count_tokens,
                                    split_tokens=embedder.split_tokens):
            texts.append(chunk.embed_text)
            rows.append((position, chunk.index, chunk.content,
                         chunk.content_hash(embedder.name)))
    vectors = embedder.embed(texts)
    return [(position, index, content, to_vector(vector), embedder.name, digest, None)
            for (position, index, content, digest), vector in zip(rows, vectors, strict=True)]


def _backend_cpu(conn: Any) -> float:
    """CPU seconds (user + system) of conn's server process so far."""
    row = conn.execute("select pg_backend_pid() as pid").fetchone()
    try:
        with open(f"/proc/{row['pid']}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError as exc:
        raise BenchError("bench.index_write reads the server's CPU from /proc: give a "
                         "--db-url on this machine (or none), on Linux") from exc
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _table(conn: Any, variant: str, turn: int) -> str:
    """A fresh copy of document_chunks' shape for variant, its indexes as the variant says."""
    name = f"bench_chunks_{variant.replace('+', '_')}_{turn}"
    conn.execute(f"drop table if exists public.{name}")
    conn.execute(f"create table public.{name}"
                 " (like public.document_chunks including all)")
    indexes = conn.execute(
        "select indexname, indexdef from pg_indexes where schemaname = 'public'"
        " and tablename = %s", (name,)).fetchall()
    for column in _DROPPED[variant]:
        dropped = [i["indexname"] for i in indexes
                   if f"({column}" in i["indexdef"] and "UNIQUE" not in i["indexdef"]]
        if not dropped:
            raise BenchError(f"document_chunks has no index on {column} to drop")
        for index in dropped:
            conn.execute(f"drop index public.{index}")
    return name


def _write(conn: Any, table: str, rows: list[tuple[Any, ...]], tag: str
           ) -> tuple[float, float]:
    """(backend CPU seconds, wall seconds) of writing rows into table, one transaction;
    each row's document id made from tag and its document's position."""
    ids = [uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{row[0]}") for row in rows]
    cpu, wall = _backend_cpu(conn), time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            f"insert into public.{table} ({_COLUMNS}) values (%s, %s, %s, %s, %s, %s, %s)",
            [(document, *row[1:]) for document, row in zip(ids, rows, strict=True)])
    spent = _backend_cpu(conn) - cpu, time.perf_counter() - wall
    found = conn.execute(f"select count(*) as n from public.{table} where document_id = any(%s)",
                         (list(set(ids)),)).fetchone()["n"]
    if found != len(rows):
        raise BenchError(f"{table} holds {found} of the {len(rows)} rows written")
    return spent


def run(*, docs: int = 300, db_url: str | None = None, seed: int = 7,
        embedder: Embedder | None = None) -> dict[str, Any]:
    """The figures as a dict (print_report). embedder: the packaged model, if loaded."""
    if docs < 1:
        raise BenchError("--docs must be at least 1")
    before = machine()
    embedder = embedder or make_embedder("sentence-transformers", DEFAULT_MODEL)
    err_console.print(f"loading {embedder.name}; chunking and embedding 2 x {docs} documents…")
    prior = chunk_rows(embedder, make_documents(docs, seed=seed + 1))
    written = chunk_rows(embedder, make_documents(docs, seed=seed))
    cpu = dict.fromkeys(VARIANTS, 0.0)
    wall = dict.fromkeys(VARIANTS, 0.0)
    with bench_database(db_url) as url, connect(url, autocommit=True) as conn:
        # (LIKE copies no foreign key: the rows' document ids need no documents.)
        for turn, order in enumerate((VARIANTS, tuple(reversed(VARIANTS)))):
            for variant in order:
                table = _table(conn, variant, turn)
                _write(conn, table, prior, "prior")
                conn.execute(f"vacuum analyze public.{table}")
                seconds, elapsed = _write(conn, table, written, "written")
                cpu[variant] += seconds / 2
                wall[variant] += elapsed / 2
                conn.execute(f"drop table public.{table}")
    chunks = len(written)
    return {
        "bench": "index_write",
        "docs": docs,
        "chunks": chunks,
        "prior_chunks": len(prior),
        "model": embedder.name,
        "database": "temporary embedded PostgreSQL" if db_url is None else "given",
        "variants": {v: {"cpu_seconds": cpu[v], "wall_seconds": wall[v],
                         "cpu_ms_per_chunk": 1000 * cpu[v] / chunks} for v in VARIANTS},
        "hnsw_cpu_seconds": cpu["hnsw+gin"] - cpu["gin"],
        "hnsw_share": (cpu["hnsw+gin"] - cpu["gin"]) / cpu["hnsw+gin"] if cpu["hnsw+gin"]
        else None,
        "machine_before": before,
        "machine_after": machine(),
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"{r['chunks']} chunks of {r['docs']} documents written in one transaction into "
          f"a copy of document_chunks already holding {r['prior_chunks']} ({r['model']}):")
    for variant, v in r["variants"].items():
        print(f"  {variant:9s} backend CPU {v['cpu_seconds']:.2f} s "
              f"({v['cpu_ms_per_chunk']:.2f} ms a chunk), wall {v['wall_seconds']:.2f} s")
    if r["hnsw_share"] is not None:
        print(f"the HNSW index: {r['hnsw_cpu_seconds']:.2f} CPU-s, "
              f"{100 * r['hnsw_share']:.0f}% of the write")
    print_load(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--db-url", help="a database on this machine (default: a temporary "
                        "embedded server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(run(docs=args.docs, db_url=args.db_url), args.json, print_report)


if __name__ == "__main__":
    main()
