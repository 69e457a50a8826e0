"""A model change with no downtime: search while a second embedding space fills, then switch.

    python -m bench.spaces [--chunks 20000] [--rate 10] [--phase-seconds 5] [--db-url URL] [--json]

Loads N chunks (documents chunked by the worker's own chunker, random unit
vectors in the active, column space; no embedding jobs left). Then, with a
search loop running at a steady rate as an authenticated user (match_documents
as PostgREST runs it, under RLS):

1. before: the loop alone for --phase-seconds;
2. during: `add_space` of the packaged MiniLM under a second name
   ("minilm-again": gte-small's loading path, sentence-transformers by name),
   filled by the real `suparag worker` in its own process, until coverage is 100%;
3. after: the filled space beside the active one, --phase-seconds;
4. switch: `activate minilm-again`, then --phase-seconds more.

Reports search p50/p95 per phase, failed searches, the backfill rate against
the bare model's rate on the same chunk texts (a random sample of
--bare-sample of them, 2,000 by default, sorted by length into calls of the
token budget: the model's best case, as in `bench worker`; in this process,
once before the loop starts and once after it ends, each time after a VACUUM
so that autovacuum does not share the cores with it; the ratio is against
their mean; goal >= 0.85), and the time from the
activate commit to the first search answered from the new space (a search
whose top chunk is the new space's top chunk for that query, not the old
one's). Issue 10's goals: p95 during the backfill within 1.5x of before,
zero failed searches.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench._common import (
    RunningWorker,
    bench_database,
    bench_user,
    emit,
    err_console,
    machine,
    make_documents,
    pct,
    print_load,
)
from worker.db import connect, ensure_vector_types
from worker.errors import BenchError
from worker.jobs.batching import DEFAULT_CLAIM_DOCUMENTS, DEFAULT_TOKEN_BUDGET, model_calls
from worker.jobs.chunking import Chunk, chunk_document
from worker.models.base import DEFAULT_MODEL, Embedder
from worker.models.factory import make_embedder
from worker.search import retrieve
from worker.spaces import activate, add_space, coverage, get_space

GOAL_RATIO = 0.85
NEW_SPACE = "minilm-again"
DIMS, K, QUERIES = 384, 10, 20


@dataclass
class Search:
    started: float  # time.monotonic()
    ms: float
    query: int
    top: int | None
    error: str | None


def load(conn: Any, embedder: Embedder, n_chunks: int, rng: np.random.Generator
         ) -> tuple[dict[str, Any], list[str]]:
    """Documents whose worker chunks total at least n_chunks; the reader's claims and the
    chunks' embedded texts (what the backfill gives the model)."""
    ensure_vector_types(conn)
    user = bench_user(conn, "spaces")
    docs, chunked, total = [], [], 0
    seed = 0
    while total < n_chunks:
        batch = make_documents(200, seed=1000 + seed, paragraphs=(1, 6))
        seed += 1
        for doc in batch:
            if total >= n_chunks:
                break
            chunks = chunk_document(doc.title, doc.content, max_tokens=embedder.max_tokens,
                                    count_tokens=embedder.count_tokens,
                                    split_tokens=embedder.split_tokens)
            docs.append(doc)
            chunked.append(chunks)
            total += len(chunks)
    ids = [uuid.uuid4() for _ in docs]
    with conn.cursor().copy("copy public.documents (id, owner_id, team, visibility, title,"
                            " content, embedding_status, embedding_model) from stdin") as copy:
        for doc_id, doc in zip(ids, docs, strict=True):
            copy.write_row((doc_id, user.id, "bench", "team", doc.title, doc.content, "ready",
                            DEFAULT_MODEL))
    vectors = rng.normal(0, 1, (total, DIMS))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts: list[str] = []
    with conn.cursor().copy("copy public.document_chunks (document_id, chunk_index, content,"
                            " embedding, embedding_model, content_hash) from stdin") as copy:
        for doc_id, chunks in zip(ids, chunked, strict=True):
            for chunk in chunks:
                copy.write_row((doc_id, chunk.index, chunk.content, vectors[len(texts)],
                                DEFAULT_MODEL, _hash(chunk)))
                texts.append(chunk.embed_text)
    # The column space is "embedded": nothing is left for the worker but the backfill.
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.execute("analyze")
    conn.commit()
    return user.claims(), texts


def _hash(chunk: Chunk) -> str:
    return chunk.content_hash(DEFAULT_MODEL)


def _settle(url: str) -> None:
    """VACUUM (ANALYZE) the database, so no autovacuum runs beside the bare model's timing."""
    with connect(url, autocommit=True) as conn:
        conn.execute("vacuum (analyze)")


def bare_rate(embedder: Embedder, texts: list[str], token_budget: int) -> float:
    """Chunks per second of embedder.embed over texts sorted by length, in calls of
    token_budget padded tokens (the model's best case)."""
    calls = [[texts[i] for i in call]
             for call in model_calls(texts, embedder.count_tokens, budget=token_budget)]
    started = time.perf_counter()
    for call in calls:
        embedder.embed(call)
    return len(texts) / (time.perf_counter() - started)


class SearchLoop:
    """match_documents as the reader at a steady rate, on a thread, until stopped."""

    def __init__(self, url: str, claims: dict[str, Any], queries: list[list[float]],
                 rate: float) -> None:
        self.url, self.claims, self.queries, self.rate = url, claims, queries, rate
        self.searches: list[Search] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-search", daemon=True)

    def __enter__(self) -> SearchLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        with connect(self.url) as conn:
            ensure_vector_types(conn)
            n, start = 0, time.monotonic()
            while not self._stop.is_set():
                q = n % len(self.queries)
                began = time.monotonic()
                top, error = None, None
                try:
                    rows = retrieve(conn, self.queries[q], claims=self.claims, model=None, k=K)
                    top = rows[0]["chunk_id"] if rows else None
                    if top is None:
                        error = "empty result"
                except Exception as exc:  # a failed search is what this bench counts
                    error = f"{type(exc).__name__}: {exc}"
                    conn.rollback()
                self.searches.append(Search(began, (time.monotonic() - began) * 1000, q, top,
                                            error))
                n += 1
                self._stop.wait(max(0.0, start + n * interval - time.monotonic()))

    def between(self, t0: float, t1: float) -> list[Search]:
        return [s for s in list(self.searches) if t0 <= s.started < t1]


def tops(conn: Any, claims: dict[str, Any], queries: list[list[float]], space: str | None
         ) -> list[int | None]:
    """Each query's top chunk in space, as the reader."""
    found = []
    for q in queries:
        rows = retrieve(conn, q, claims=claims, model=None, k=K, space=space)
        found.append(rows[0]["chunk_id"] if rows else None)
    return found


def _phase(searches: list[Search]) -> dict[str, Any]:
    ok = [s.ms for s in searches if s.error is None]
    return {"searches": len(searches), "failed": len(searches) - len(ok),
            "p50_ms": pct(ok, 50) if ok else None, "p95_ms": pct(ok, 95) if ok else None,
            "errors": sorted({s.error for s in searches if s.error})[:5]}


def run(*, chunks: int = 20_000, rate: float = 10.0, phase_seconds: float = 5.0,
        token_budget: int = DEFAULT_TOKEN_BUDGET, bare_sample: int = 2_000, timeout: float = 3600.0,
        db_url: str | None = None) -> dict[str, Any]:
    """Measure once; the figures as a dict (see print_report)."""
    if chunks < 1 or rate <= 0 or phase_seconds <= 0 or bare_sample < 1:
        raise BenchError("--chunks, --rate, --phase-seconds and --bare-sample must be positive")
    rng = np.random.default_rng(5)
    embedder = make_embedder("sentence-transformers", DEFAULT_MODEL)
    err_console.print(f"loading {embedder.name}…")
    embedder.embed(["load the model"])
    queries = [list(map(float, v)) for v in
               (lambda m: m / np.linalg.norm(m, axis=1, keepdims=True))(
                   rng.normal(0, 1, (QUERIES, DIMS)))]
    before_machine = machine()
    with bench_database(db_url) as url, connect(url) as conn:
        claims, texts = load(conn, embedder, chunks, rng)
        err_console.print(f"loaded {len(texts)} chunks; timing the bare model on "
                          f"{min(len(texts), bare_sample)} of them…")
        # A random sample: timing the model on every chunk of a large run would take as
        # long as the backfill itself.
        sample = ([texts[i] for i in rng.choice(len(texts), bare_sample, replace=False)]
                  if len(texts) > bare_sample else texts)
        _settle(url)
        bare_before = bare_rate(embedder, sample, token_budget)
        old_tops = tops(conn, claims, queries, None)
        with RunningWorker(url, embedder, batch_size=DEFAULT_CLAIM_DOCUMENTS,
                           token_budget=token_budget, in_process=False) as worker, \
                SearchLoop(url, claims, queries, rate) as loop:
            t_before = time.monotonic()
            time.sleep(phase_seconds)
            worker.check()
            err_console.print(f"adding space {NEW_SPACE} and filling it…")
            t_add = time.monotonic()
            with connect(url, autocommit=True) as admin:
                space = add_space(admin, DEFAULT_MODEL, dimensions=DIMS, name=NEW_SPACE)
                while True:
                    (cover,) = coverage(admin, [space])
                    if not cover.missing:
                        break
                    worker.check()
                    if time.monotonic() - t_add > timeout:
                        raise BenchError(f"the backfill did not finish in {timeout:.0f} s "
                                         f"({cover.vectors}/{cover.chunks})")
                    time.sleep(0.2)
            t_full = time.monotonic()
            time.sleep(phase_seconds)
            with connect(url) as other:
                new_tops = tops(other, claims, queries, NEW_SPACE)
            t_after_end = time.monotonic()
            with connect(url) as admin:
                activate(admin, NEW_SPACE)
                t_act = time.monotonic()
                active = get_space(admin).name
            time.sleep(phase_seconds)
            t_end = time.monotonic()
        first_new = next((s.started - t_act for s in loop.between(t_act, t_end)
                          if s.error is None and s.top == new_tops[s.query]
                          and new_tops[s.query] != old_tops[s.query]), None)
        stale_after = sum(1 for s in loop.between(t_act, t_end)
                          if s.top == old_tops[s.query] != new_tops[s.query])
        phases = {"before": _phase(loop.between(t_before, t_add)),
                  "during": _phase(loop.between(t_add, t_full)),
                  "after": _phase(loop.between(t_full, t_after_end)),
                  "switch": _phase(loop.between(t_after_end, t_end))}
        _settle(url)
        bare_after = bare_rate(embedder, sample, token_budget)
    bare = (bare_before + bare_after) / 2
    fill_s = t_full - t_add
    backfill = len(texts) / fill_s
    before_p95, during_p95 = phases["before"]["p95_ms"], phases["during"]["p95_ms"]
    return {
        "bench": "spaces", "chunks": len(texts), "rate_per_s": rate,
        "phase_seconds": phase_seconds, "token_budget": token_budget,
        "bare_sample": min(len(texts), bare_sample), "active_after": active,
        "phases": phases,
        "failed_searches": sum(p["failed"] for p in phases.values()),
        "during_over_before_p95": (during_p95 / before_p95
                                   if before_p95 and during_p95 else None),
        "bare_model_chunks_per_s": bare, "bare_model_before_after": [bare_before, bare_after],
        "backfill_chunks_per_s": backfill,
        "backfill_s": fill_s, "backfill_ratio": backfill / bare, "goal_ratio": GOAL_RATIO,
        "activate_to_first_new_answer_ms": None if first_new is None else first_new * 1000,
        "old_answers_after_activate": stale_after,
        "worker": worker.description,
        "machine_before": before_machine, "machine_after": machine(),
    }


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    print(f"\n{r['chunks']} chunks; search loop at {r['rate_per_s']:g}/s "
          f"(match_documents, k={K}, authenticated, RLS); worker: {r['worker']}")
    print(f"{'phase':<9}{'searches':>9}{'failed':>8}{'p50':>10}{'p95':>10}")
    for name, p in r["phases"].items():
        p50 = "-" if p["p50_ms"] is None else f"{p['p50_ms']:.1f}ms"
        p95 = "-" if p["p95_ms"] is None else f"{p['p95_ms']:.1f}ms"
        print(f"{name:<9}{p['searches']:>9}{p['failed']:>8}{p50:>10}{p95:>10}")
        for error in p["errors"]:
            print(f"  {error}")
    ratio = r["during_over_before_p95"]
    print(f"p95 during / before: {'-' if ratio is None else f'{ratio:.2f}'} (goal <= 1.5); "
          f"failed searches: {r['failed_searches']} (goal 0)")
    print(f"backfill {r['backfill_chunks_per_s']:.1f} chunks/s in {r['backfill_s']:.1f} s vs "
          f"bare model {r['bare_model_chunks_per_s']:.1f}/s (before/after: "
          f"{r['bare_model_before_after'][0]:.1f}/{r['bare_model_before_after'][1]:.1f}): "
          f"ratio {r['backfill_ratio']:.2f} "
          f"(goal >= {r['goal_ratio']})")
    first = r["activate_to_first_new_answer_ms"]
    print(f"activate -> first answer from {NEW_SPACE}: "
          f"{'never' if first is None else f'{first:.0f} ms'}; answers from the old space "
          f"after activate: {r['old_answers_after_activate']}")
    print_load(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--phase-seconds", type=float, default=5.0)
    parser.add_argument("--token-budget", type=int, default=DEFAULT_TOKEN_BUDGET)
    parser.add_argument("--bare-sample", type=int, default=2_000,
                        help="chunks the bare model is timed on (a random sample)")
    parser.add_argument("--db-url", help="an empty database to use (default: a temporary server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(chunks=args.chunks, rate=args.rate, phase_seconds=args.phase_seconds,
                 token_budget=args.token_budget, bare_sample=args.bare_sample,
                   db_url=args.db_url)
    emit(result, args.json, print_report)


if __name__ == "__main__":
    main()
