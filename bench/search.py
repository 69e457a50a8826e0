"""Search latency and recall under RLS, for a broad reader and a 1% reader.

    python -m bench.search --chunks 100000 [--queries 200] [--clients 8] [--table-space]
                           [--maintenance-work-mem 2GB] [--compare-sql FILE]
                           [--db-url URL] [--json]

Loads N chunks (384-dim clustered unit vectors, 10 per document, words from a
small vocabulary for full text) into a fresh database: 99% are team documents
of team "wide", 1% private documents of user "narrow", every 100th document,
so they are spread through the table as a real user's are among everyone
else's (until session 11 they were the first 1%, where a sequential scan
finds them at once). Then, as each user
(role authenticated + JWT claims, like PostgREST), times match_documents and
hybrid_search and measures recall@10 of match_documents against an exact
scan of the same rows; then --clients connections at once run match_documents
as each caller, for throughput (queries/s). Without --db-url it starts its own
embedded server in a temporary folder, with maintenance_work_mem sized so the
HNSW graph fits (about 2.5 kB a vector; pgvector's build slows several-fold
once it does not, and says so in a notice the bench reports). Prints figures
and ratios from this one run.

--table-space also copies the same vectors into a second embedding space
(suparag_search.chunk_vectors with its own partial HNSW index, issue 10) and
times match_documents in it (`space => 'bench-table'`) beside the column
space, same callers and queries: what the table spaces' RLS costs.

--compare-sql FILE then runs FILE's SQL (say, an earlier `create or replace
function public.match_documents`) in the same database and measures again,
same callers and queries: a before/after of a search function on one build
(a million chunks take a quarter of an hour to load). It changes the
database's functions, so give it a throwaway database.
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg

from bench._common import (
    bench_database,
    emit,
    err_console,
    machine,
    pct,
    print_load,
    progress,
)
from worker.db import connect, ensure_vector_types, set_request_context
from worker.errors import BenchError
from worker.spaces import Space, index_sql
from worker.users import add_user

DIMS, PER_DOC, K = 384, 10, 10
#: A throwaway server: durability off (the bench measures reads, not commits).
#: shared_buffers is sized per run (buffer_memory_mb).
SERVER_SETTINGS = {"fsync": "off", "synchronous_commit": "off"}
#: What one chunk takes in shared buffers to be searched without a read from outside
#: them: its HNSW entry (about 2 kB at 384 dimensions, m = 16: 1,953 MB at a million),
#: its heap row with the vector (1.7 kB, but 4 to an 8 kB page: 2 kB, 1,953 MB at a
#: million) and its share of the other indexes and the documents (about 90 bytes),
#: with room to spare. Session 13's million-chunk run had 4 kB a chunk (4 GB), which
#: the index and the rows alone filled (3,906 MB).
BUFFER_BYTES_PER_CHUNK = 5120
#: What one vector costs an HNSW build in memory (vector + graph, m = 16), rounded up.
HNSW_BYTES_PER_VECTOR = 2560
# 2,000 synthetic terms, 12 per chunk: each term is in ~0.6% of chunks, as a
# content word is in real text (a 20-word vocabulary makes every term match
# half the corpus, and full-text ranking then dominates every hybrid query).
WORDS = [f"term{i:04d}" for i in range(2000)]


def clustered(rng: np.random.Generator, n: int, centers: np.ndarray) -> np.ndarray:
    v = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 0.6, (n, DIMS)) / np.sqrt(DIMS)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


def build_memory_mb(n_chunks: int) -> int:
    """maintenance_work_mem that holds the HNSW graph of n_chunks vectors: at least
    1 GB, in 256 MB steps."""
    need = n_chunks * HNSW_BYTES_PER_VECTOR / 2**20
    return max(1024, 256 * math.ceil(need / 256))


def buffer_memory_mb(n_chunks: int) -> int:
    """shared_buffers that hold the index and the chunks: at least 1 GB, at most a
    quarter of the machine's memory (what Supabase's compute sizes give it), in 256 MB
    steps. At a million chunks (index 1,953 MB) with 1 GB, each HNSW search read its
    pages from outside shared buffers: session 11's run measured match_documents at
    p50 84 ms; on a rebuild with 6 GB, every page a search read was a hit and 20
    queries took p50 23 ms (session 12)."""
    need = n_chunks * BUFFER_BYTES_PER_CHUNK / 2**20
    quarter = psutil.virtual_memory().total / 4 / 2**20
    return int(max(1024, min(256 * math.ceil(need / 256), 256 * (quarter // 256))))


def load(conn: Any, n_chunks: int,
         rng: np.random.Generator) -> tuple[dict[str, dict[str, Any]], np.ndarray, dict[str, Any]]:
    ensure_vector_types(conn)  # vectors go to the database through pgvector's adapter
    wide = add_user(conn, "wide@bench.local", team="wide")
    narrow = add_user(conn, "narrow@bench.local", team="narrow")
    n_docs = n_chunks // PER_DOC
    narrow_every = min(100, n_docs)  # at least one narrow document
    centers = rng.normal(0, 1, (256, DIMS))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    ids = [uuid.uuid4() for _ in range(n_docs)]
    with conn.cursor().copy("copy public.documents (id, owner_id, team, visibility, title,"
                            " content) from stdin") as copy:
        for i, doc_id in enumerate(ids):
            if i % narrow_every == narrow_every // 2:
                copy.write_row((doc_id, narrow.id, "narrow", "private", f"doc {i}", "c"))
            else:
                copy.write_row((doc_id, wide.id, "wide", "team", f"doc {i}", "c"))
    index = conn.execute("select indexdef from pg_indexes"
                         " where indexname = 'document_chunks_embedding_idx'").fetchone()
    conn.execute("drop index public.document_chunks_embedding_idx")
    vectors = clustered(rng, n_chunks, centers)
    with conn.cursor().copy("copy public.document_chunks (document_id, chunk_index, content,"
                            " embedding, embedding_model, content_hash) from stdin") as copy:
        for i, v in enumerate(vectors):
            words = " ".join(rng.choice(WORDS, 12))
            copy.write_row((ids[i // PER_DOC], i % PER_DOC, words, v, "bench", "h"))
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.commit()
    err_console.print(f"building the HNSW index over {n_chunks} vectors…")
    started = time.perf_counter()
    conn.execute(index["indexdef"])
    built = time.perf_counter() - started
    # On stderr, so --json output stays JSON.
    err_console.print(f"built HNSW index over {n_chunks} vectors in {built:.1f} s")
    conn.execute("analyze")
    row = conn.execute(
        "select pg_relation_size('public.document_chunks_embedding_idx') as bytes,"
        " current_setting('maintenance_work_mem') as mwm,"
        " current_setting('shared_buffers') as sb,"
        " current_setting('max_parallel_maintenance_workers')::int as workers").fetchone()
    conn.commit()
    build = {"seconds": built, "index_mb": row["bytes"] / 2**20,
             "maintenance_work_mem": row["mwm"], "shared_buffers": row["sb"],
             "parallel_workers": row["workers"],
             "graph_fit_in_memory": not any("no longer fits" in n for n in notices)}
    return {
        "all rows (99%)": wide.claims(),
        "1% reader": narrow.claims(),
    }, centers, build


TABLE_SPACE = "bench-table"


def load_table_space(conn: Any) -> float:
    """The column's vectors again, as the table space TABLE_SPACE; its index build time."""
    space = conn.execute(
        "insert into suparag_private.embedding_spaces (name, provider, model, dimensions)"
        " values (%s, 'sentence-transformers', 'bench', %s)"
        " returning id, name, provider, model, dimensions, storage, state, options",
        (TABLE_SPACE, DIMS)).fetchone()
    conn.execute("insert into suparag_search.chunk_vectors (space_id, chunk_id, embedding)"
                 " select %s, c.id, c.embedding from public.document_chunks c", (space["id"],))
    conn.commit()
    started = time.perf_counter()
    conn.autocommit = True
    try:
        conn.execute(index_sql(Space(**space)))
    finally:
        conn.autocommit = False
    built = time.perf_counter() - started
    err_console.print(f"built the table space's HNSW index in {built:.1f} s")
    conn.execute("analyze")
    conn.commit()
    return built


def timed(conn: Any, claims: dict[str, Any], sql: str, params: tuple[Any, ...],
          *, exact: bool = False) -> tuple[float, list[int]]:
    with conn.transaction(force_rollback=True):
        set_request_context(conn, claims)
        if exact:
            conn.execute("set local enable_indexscan = off")
        started = time.perf_counter()
        rows = conn.execute(sql, params).fetchall()
        elapsed = (time.perf_counter() - started) * 1000
    return elapsed, [r["chunk_id"] for r in rows]


def measure(conn: Any, callers: dict[str, dict[str, Any]], centers: np.ndarray, queries: int,
            rng: np.random.Generator, *, spaces: tuple[str | None, ...] = (None,)
            ) -> list[dict[str, Any]]:
    """Latency and recall of both search functions, per caller and space, same queries."""
    qs = list(clustered(rng, queries, centers))
    words = [" ".join(rng.choice(WORDS, 2)) for _ in range(queries)]
    results = []
    with progress() as bar:
        task = bar.add_task("queries", total=len(callers) * queries * len(spaces))
        for space in spaces:
            for name, claims in callers.items():
                result = _measure_caller(conn, name, claims, qs, words,
                                         lambda: bar.advance(task), space=space)
                results.append({**result, "space": space or "column"})
    return results


def _measure_caller(conn: Any, name: str, claims: dict[str, Any], qs: list[np.ndarray],
                    words: list[str], advance: Callable[[], None], *,
                    space: str | None = None) -> dict[str, Any]:
    named = sql_literal(space)
    match = f"select chunk_id from public.match_documents(%s, %s, space => {named})"
    hybrid = f"select chunk_id from public.hybrid_search(%s, %s, %s, space => {named})"
    for q in qs[:5]:  # warm caches
        timed(conn, claims, match, (q, K))
    m_lat, h_lat, recalls, counts = [], [], [], []
    for q, w in zip(qs, words, strict=True):
        ms, got = timed(conn, claims, match, (q, K))
        _, truth = timed(conn, claims, match, (q, K), exact=True)
        m_lat.append(ms)
        counts.append(len(got))
        recalls.append(len(set(got) & set(truth)) / max(1, len(truth)))
        ms, _ = timed(conn, claims, hybrid, (w, q, K))
        h_lat.append(ms)
        advance()
    return {
        "caller": name,
        "match_p50_ms": pct(m_lat, 50), "match_p95_ms": pct(m_lat, 95),
        "hybrid_p50_ms": pct(h_lat, 50), "hybrid_p95_ms": pct(h_lat, 95),
        "recall_at_10": statistics.fmean(recalls),
        "mean_rows_returned": statistics.fmean(counts),
    }


def throughput(url: str, callers: dict[str, dict[str, Any]], centers: np.ndarray,
               clients: int, queries: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """match_documents from `clients` connections at once, per caller: queries/s and
    p50/p95 of each call (each client runs `queries` calls)."""
    results = []
    for name, claims in callers.items():
        qs = list(clustered(rng, clients * queries, centers))
        wall, latencies = _concurrently(url, claims, [qs[i::clients] for i in range(clients)])
        results.append({"caller": name, "clients": clients, "queries": len(latencies),
                        "qps": len(latencies) / wall,
                        "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95)})
    return results


def _concurrently(url: str, claims: dict[str, Any],
                  shares: list[list[np.ndarray]]) -> tuple[float, list[float]]:
    """One connection per share of queries, all started together: the wall time from
    the start to the last answer, and every call's latency in ms."""
    sql = "select chunk_id from public.match_documents(%s, %s)"
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(shares) + 1)
    conns = [connect(url) for _ in shares]

    def client(conn: Any, share: list[np.ndarray]) -> None:
        timed(conn, claims, sql, (share[0], K))  # warm this connection's caches
        start.wait()
        mine = [timed(conn, claims, sql, (q, K))[0] for q in share]
        with lock:
            latencies.extend(mine)

    try:
        threads = [threading.Thread(target=client, args=(c, share))
                   for c, share in zip(conns, shares, strict=True)]
        for t in threads:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - began, latencies
    finally:
        for c in conns:
            c.close()


def sql_literal(value: str | None) -> str:
    """A space name as an SQL literal (names are [A-Za-z0-9._-], checked by the table)."""
    return "null" if value is None else "'" + value.replace("'", "''") + "'"


#: The most SQL --compare-sql reads (a few function definitions).
COMPARE_SQL_MAX_BYTES = 1_000_000


def read_compare_sql(path: Path) -> str:
    """--compare-sql's file: readable, not empty, at most COMPARE_SQL_MAX_BYTES."""
    try:
        size = path.stat().st_size
        if size > COMPARE_SQL_MAX_BYTES:
            raise BenchError(f"--compare-sql {path}: {size} bytes, more than "
                             f"{COMPARE_SQL_MAX_BYTES}; give it the functions to compare only")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"--compare-sql {path}: cannot read it ({exc})") from exc
    if not text.strip():
        raise BenchError(f"--compare-sql {path} is empty")
    return text


def run(*, chunks: int = 100_000, queries: int = 200, clients: int = 8,
        maintenance_work_mem: str | None = None, table_space: bool = False,
        compare_sql: Path | None = None, db_url: str | None = None) -> dict[str, Any]:
    """Load the corpus and measure once (twice with compare_sql: after it ran, on the same
    data and queries); the figures as a dict (see print_report)."""
    if chunks < PER_DOC or queries < 1 or clients < 1:
        raise BenchError(f"--chunks must be at least {PER_DOC}, --queries and --clients at "
                         "least 1")
    compare_text = read_compare_sql(compare_sql) if compare_sql is not None else None
    rng = np.random.default_rng(11)
    mwm = maintenance_work_mem or f"{build_memory_mb(chunks)}MB"
    settings = {**SERVER_SETTINGS, "maintenance_work_mem": f"'{mwm}'",
                "shared_buffers": f"'{buffer_memory_mb(chunks)}MB'"}
    with bench_database(db_url, settings=settings) as url, connect(url) as conn:
        if db_url is not None:  # a given server keeps its settings; the build needs this
            conn.execute(f"set maintenance_work_mem = '{mwm}'")
        callers, centers, build = load(conn, chunks, rng)
        spaces: tuple[str | None, ...] = (None,)
        if table_space:
            load_table_space(conn)
            spaces = (None, TABLE_SPACE)
        before = machine()
        state = rng.bit_generator.state  # the compared pass draws the same queries

        def one_pass() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            rng.bit_generator.state = state
            results = measure(conn, callers, centers, queries, rng, spaces=spaces)
            return results, throughput(url, callers, centers, clients,
                                       max(1, queries // clients), rng)

        results, concurrent = one_pass()
        compared = None
        if compare_sql is not None and compare_text is not None:
            err_console.print(f"running {compare_sql}, then measuring again…")
            started = time.perf_counter()
            try:
                conn.execute(compare_text)
                conn.commit()
            except psycopg.Error as exc:
                raise BenchError(f"--compare-sql {compare_sql} failed: {exc}") from exc
            sql_seconds = time.perf_counter() - started
            c_results, c_concurrent = one_pass()
            compared = {"sql": str(compare_sql), "sql_seconds": sql_seconds,
                        "results": c_results, "concurrent": c_concurrent}
    return {"chunks": chunks, "k": K, "queries": queries, "index_build_s": build["seconds"],
            "build": build, "results": results, "concurrent": concurrent,
            "compared": compared, "machine_before": before, "machine_after": machine()}


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    b = r["build"]
    print(f"\n{r['chunks']} chunks, k={r['k']}, {r['queries']} queries per caller")
    print(f"HNSW build {b['seconds']:.1f} s, index {b['index_mb']:.0f} MB, maintenance_work_mem "
          f"{b['maintenance_work_mem']}, shared_buffers {b.get('shared_buffers')}, "
          f"{b['parallel_workers']} parallel workers, graph "
          f"{'fit in memory' if b['graph_fit_in_memory'] else 'did NOT fit in memory'}")
    _print_results(r["results"])
    print("goal at 100k: match p95 <= 5 ms (all rows), <= 15 ms (1% reader), recall >= 0.95")
    wide, narrow = r["results"][:2]
    ratio = narrow["match_p95_ms"] / wide["match_p95_ms"]
    print(f"1%-reader / all-rows p95 ratio (match): {ratio:.2f}")
    for column, table in zip(r["results"][:2], r["results"][2:], strict=False):
        print(f"table / column space p50 ratio (match, {column['caller']}): "
              f"{table['match_p50_ms'] / column['match_p50_ms']:.2f}")
    _print_concurrent(r["concurrent"])
    if r.get("compared"):
        cmp = r["compared"]
        print(f"\nthe same data and queries after running {cmp['sql']} "
              f"({cmp['sql_seconds']:.1f} s):")
        _print_results(cmp["results"])
        _print_concurrent(cmp["concurrent"])
        for now, then in zip(r["results"], cmp["results"], strict=True):
            print(f"this checkout / {cmp['sql']} p95 ratio (match, {now['caller']}, "
                  f"{now['space']}): {now['match_p95_ms'] / then['match_p95_ms']:.2f}, recall "
                  f"{now['recall_at_10']:.3f} vs {then['recall_at_10']:.3f}")
    print_load(r)


def _print_results(results: list[dict[str, Any]]) -> None:
    print(f"{'caller':<16}{'space':>12}{'match p50':>11}{'p95':>11}{'hybrid p50':>13}{'p95':>11}"
          f"{'recall@10':>11}{'rows':>6}")
    for c in results:
        print(f"{c['caller']:<16}{c['space']:>12}{c['match_p50_ms']:>9.2f}ms{c['match_p95_ms']:>9.2f}ms"
              f"{c['hybrid_p50_ms']:>11.2f}ms{c['hybrid_p95_ms']:>9.2f}ms"
              f"{c['recall_at_10']:>11.3f}{c['mean_rows_returned']:>6.1f}")


def _print_concurrent(concurrent: list[dict[str, Any]]) -> None:
    for c in concurrent:
        print(f"{c['clients']} clients, {c['caller']}: {c['qps']:.0f} queries/s, "
              f"p50 {c['p50_ms']:.2f} ms, p95 {c['p95_ms']:.2f} ms ({c['queries']} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--maintenance-work-mem", help="for the index build (default: sized "
                        "from --chunks so the graph fits)")
    parser.add_argument("--table-space", action="store_true",
                        help="also time the same vectors in a table space")
    parser.add_argument("--compare-sql", type=Path, help="then run this SQL file (e.g. an "
                        "earlier match_documents) and measure again on the same data")
    parser.add_argument("--db-url", help="an empty database to use (default: a temporary server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(chunks=args.chunks, queries=args.queries, clients=args.clients,
                 maintenance_work_mem=args.maintenance_work_mem,
                 table_space=args.table_space, compare_sql=args.compare_sql,
                 db_url=args.db_url)
    emit(result, args.json, print_report)


if __name__ == "__main__":
    main()
