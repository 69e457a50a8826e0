"""The embedding worker's throughput against the bare model's, on the same chunks.

    python -m bench.worker [--docs 200] [--batch-size 64] [--token-budget 4096]
                           [--backend torch|onnx-int8] [--lanes N] [--in-process]
                           [--db-url URL] [--json]

1. Bare model: the N documents are chunked exactly as the worker chunks them
   (chunk_document with the model's tokenizer), the texts deduplicated,
   sorted by length and cut into calls of --token-budget padded tokens (the
   model's best case: the worker's calls are the same size but only sorted
   within a claim), and each call goes to embedder.embed, the call the
   worker makes. Timed over those calls only, after a warm-up call:
   chunks per second. Measured both ways the model can run them: one call
   at a time on all cores (torch's default threads), and in the worker's
   lanes (worker/models/lanes.py: as many calls at once as torch has
   threads, one thread each), when the worker has more than one. The faster
   of the two is the bare rate. The even-numbered batches run before step 2
   and the odd-numbered ones after it (after a VACUUM of the tables the run
   wrote), so a change in the machine's background load during the run
   weighs on both sides alike.
2. End to end: the worker (by default the real `suparag worker` in its own
   process) is started, warmed up and left idle on LISTEN. The warm-up embeds
   --warm-up-docs documents like the measured ones (other texts; default:
   as many as --docs, at most WARM_UP_DOCS): a worker's first few hundred
   documents grow its allocator's heaps, page by page (measured in a fresh
   worker's 300-document drain: 120,000-240,000 page faults and 1.6-2.1 CPU-s
   of kernel time; after one such warm-up, 47,000 and 0.7 s), which a
   deployed worker pays once in its life, not in every drain. The bare
   model's lanes are warmed alike: one untimed pass over their calls first.
   All N documents are inserted as a user in one transaction; the clock runs
   from the COMMIT's return until every one of them is `ready`, read whenever a
   write-back changes a status (a bench-only trigger notifies; at least every
   second): chunks per second.

3. Where the cores went during step 2, in CPU seconds: the worker's process,
   the database server's processes (when it runs on this machine; sampled
   every second), this process, the machine's idle time; beside them the CPU
   the bare model's calls took on the same chunks. The worker's CPU beyond
   the bare model's is the pipeline's own work; the database's is what the
   cores gave to claims, write-backs and HNSW index inserts, which a
   database on its own machine (as on Supabase) would give back to the model.
   The ceiling is the ratio with only the bare model's CPU and the server's on
   the cores: model / (model + database).

The ratio end-to-end / bare is what the worker costs over the model
(claims, chunking, reads, write-back, index updates, wake-up), most of which
runs beside the model (worker/jobs/pipeline.py). Goal: >= 0.95 (issue 16).
Both sides use torch's default thread count (all cores) and the same texts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench._common import (
    RunningWorker,
    ServerCpu,
    StatusSignal,
    bench_database,
    bench_user,
    busy_and_idle,
    check_queue_empty,
    embed_texts,
    emit,
    err_console,
    insert_documents,
    local_postmaster,
    machine,
    make_documents,
    print_load,
    progress,
    remove_users,
    status_counts,
    wait_until,
    warm_up,
)
from worker.db import connect
from worker.errors import BenchError
from worker.jobs.batching import (
    DEFAULT_CLAIM_BUDGETS,
    DEFAULT_CLAIM_DOCUMENTS,
    DEFAULT_TOKEN_BUDGET,
    model_calls,
)
from worker.models.base import DEFAULT_MODEL, Embedder
from worker.models.factory import make_embedder
from worker.models.lanes import Lanes, torch_threads

GOAL_RATIO = 0.95
#: The bench reads the documents' status when a write-back changed it (StatusSignal), and
#: at least every POLL_SECONDS regardless (to see a worker that died, and to sample the
#: server's CPU). Polled every 100 ms instead, the reads took 3.7 CPU-s of a 3,000-document
#: run (bench and server), and the end was seen up to 100 ms late.
POLL_SECONDS = 1.0


def model_calls_of(embedder: Embedder, texts_per_doc: list[list[str]],
                   token_budget: int) -> list[list[str]]:
    """The bare model's calls: every text once, sorted by length, token_budget per call."""
    texts = list(dict.fromkeys(t for texts in texts_per_doc for t in texts))
    return [[texts[i] for i in call]
            for call in model_calls(texts, embedder.count_tokens, budget=token_budget)]


def _set_torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def time_model(embedder: Embedder, groups: list[list[str]], label: str,
               cpu: list[float] | None = None, threads: int | None = None) -> float:
    """Seconds embedder.embed takes over groups, one call each, with torch at threads
    (None: as it is); the CPU seconds this process used in those calls (all its threads)
    are added to cpu[0] if given."""
    _set_torch_threads(threads)
    elapsed = 0.0
    with progress() as bar:
        task = bar.add_task(label, total=len(groups))
        for group in groups:
            started, cpu_started = time.perf_counter(), time.process_time()
            embedder.embed(group)
            elapsed += time.perf_counter() - started
            if cpu is not None:
                cpu[0] += time.process_time() - cpu_started
            bar.advance(task)
    return elapsed


def time_lanes(embedder: Embedder, groups: list[list[str]], lanes: int, label: str,
               cpu: list[float] | None, threads: int | None) -> float:
    """Seconds the worker's lanes take over groups: `lanes` calls at once, torch at one
    thread each (worker/models/lanes.py), after an untimed pass over groups; torch is
    then set back to threads. CPU seconds are added to cpu[0] if given."""
    _set_torch_threads(1)
    runner = Lanes(embedder, lanes)
    try:
        # Untimed: the lanes' first call runs alone, and their threads' heaps grow to what
        # these calls need (as the worker's warm-up does for the worker).
        runner.embed_calls(groups)
        with progress() as bar:
            task = bar.add_task(label, total=len(groups))
            started, cpu_started = time.perf_counter(), time.process_time()
            runner.embed_calls(groups, before=lambda: bar.advance(task))
            elapsed = time.perf_counter() - started
            if cpu is not None:
                cpu[0] += time.process_time() - cpu_started
    finally:
        runner.close()
        _set_torch_threads(threads)
    return elapsed


#: The most documents the worker's warm-up embeds by default (module docstring, step 2).
WARM_UP_DOCS = 300

#: Seconds between two samples of the database server's processes. Each sample lists
#: them and reads each one's CPU times (1.5 ms of this process's CPU for 13 processes,
#: measured); at every 100-ms poll that was about 0.35 CPU-s of a 23-s run, taken from
#: the cores the worker was being measured on. A process that exits between two samples
#: loses what it used since the last one (ServerCpu).
SERVER_SAMPLE_SECONDS = 1.0


class CoreAccount:
    """Where the machine's cores went during the end-to-end run: the worker's process,
    the database server's processes, this process (its polling), and idle, in CPU
    seconds. The server is sampled every SERVER_SAMPLE_SECONDS, so its short-lived
    processes count."""

    def __init__(self, conn: Any, running: RunningWorker) -> None:
        postmaster = local_postmaster(conn)
        self.server = ServerCpu(postmaster) if postmaster is not None else None
        self.running = running
        self._sampled = 0.0

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._worker = self.running.cpu_seconds()
        self._bench = time.process_time()
        self._busy, self._idle = busy_and_idle()
        self.sample(now=True)

    def sample(self, *, now: bool = False) -> None:
        """Sample the server's processes, if SERVER_SAMPLE_SECONDS have passed (or now)."""
        if self.server is None:
            return
        at = time.perf_counter()
        if now or at - self._sampled >= SERVER_SAMPLE_SECONDS:
            self.server.sample()
            self._sampled = at

    def stop(self) -> dict[str, Any]:
        self.sample(now=True)
        busy, idle = busy_and_idle()
        worker = self.running.cpu_seconds()
        return {
            "cores": os.cpu_count(),
            "wall_seconds": time.perf_counter() - self._wall,
            "worker": None if worker is None or self._worker is None else worker - self._worker,
            "database": None if self.server is None else self.server.seconds(),
            "bench": time.process_time() - self._bench,
            "busy": busy - self._busy,
            "idle": idle - self._idle,
        }


def run(*, docs: int = 200, batch_size: int = DEFAULT_CLAIM_DOCUMENTS,
        in_process: bool = False,
        db_url: str | None = None, seed: int = 7, backend: str = "torch",
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        claim_budgets: int = DEFAULT_CLAIM_BUDGETS, lanes: int | None = None,
        warm_up_docs: int | None = None) -> dict[str, Any]:
    """Measure both rates once; the figures as a dict (see print_report).

    lanes: the worker's `--lanes` (None: its default, one per core on torch).
    warm_up_docs: documents the worker embeds before the clock (None: docs, at most
    WARM_UP_DOCS)."""
    if docs < 1:
        raise BenchError("--docs must be at least 1")
    if warm_up_docs is None:
        warm_up_docs = min(docs, WARM_UP_DOCS)
    if warm_up_docs < 1:
        raise BenchError("--warm-up-docs must be at least 1")
    before = machine()
    threads = torch_threads()  # torch's own count, before a worker here switched it
    worker_lanes = lanes if lanes is not None else (
        threads or 1 if backend == "torch" else 1)
    embedder = make_embedder("sentence-transformers", DEFAULT_MODEL, backend=backend)
    corpus = make_documents(docs, seed=seed)
    with bench_database(db_url) as url, connect(url, autocommit=True) as conn:
        check_queue_empty(conn)
        err_console.print(f"loading {embedder.name}…")
        embedder.embed(["load the model"])
        texts_per_doc = [embed_texts(embedder, d) for d in corpus]
        chunks = sum(len(t) for t in texts_per_doc)
        groups = model_calls_of(embedder, texts_per_doc, token_budget)
        embedder.embed(groups[0])  # warm-up: first-call allocations, not the model's speed
        # The database is up and idle meanwhile, as it is for the worker between batches.
        model_cpu = [0.0]  # CPU seconds of the bare model's calls (this process, all threads)
        lanes_cpu = [0.0]  # the same, in the worker's lanes
        even = time_model(embedder, groups[0::2], "bare model, even batches", model_cpu,
                          threads)
        lanes_even = lanes_odd = 0.0
        if worker_lanes > 1:
            lanes_even = time_lanes(embedder, groups[0::2], worker_lanes,
                                    f"bare model in {worker_lanes} lanes, even batches",
                                    lanes_cpu, threads)
        # Another backend is measured against fp32 torch on the same calls, in this run.
        fp32 = None if backend == "torch" else make_embedder(
            "sentence-transformers", DEFAULT_MODEL, backend="torch")
        torch_even = torch_odd = 0.0
        if fp32 is not None:
            fp32.embed(groups[0])
            torch_even = time_model(fp32, groups[0::2], "fp32 torch, even batches")
        warm, user = bench_user(conn, "bench-warm-up"), bench_user(conn, "bench-worker")
        try:
            with RunningWorker(url, embedder, batch_size=batch_size, in_process=in_process,
                               token_budget=token_budget, claim_budgets=claim_budgets,
                               lanes=lanes) as running, StatusSignal(url) as signal:
                warm_up(conn, running, warm, docs=warm_up_docs, paragraphs=(1, 14))
                account = CoreAccount(conn, running)
                ids = insert_documents(conn, user, corpus)
                started = time.perf_counter()
                account.start()
                with progress() as bar:
                    task = bar.add_task("end to end", total=docs)

                    def all_ready() -> bool:
                        account.sample()
                        ready, failed = status_counts(conn, user)
                        if failed:
                            raise BenchError(f"{failed} documents failed to embed")
                        bar.update(task, completed=ready)
                        return ready == docs

                    wait_until(all_ready, worker=running, interval=POLL_SECONDS,
                               timeout=max(300.0, 40 * even), what="the documents",
                               pause=signal.wait)
                e2e_seconds = time.perf_counter() - started
                cores = account.stop()
            row = conn.execute("select count(*) as n from public.document_chunks"
                               " where document_id = any(%s)", (ids,)).fetchone()
            stored = int(row["n"]) if row else 0
            if stored != chunks:
                raise BenchError(f"the worker stored {stored} chunks where the bare run embedded "
                                 f"{chunks}: the two did not embed the same texts")
            # The end-to-end run left dead rows: vacuum now, so autovacuum does not take a
            # core from the odd batches (bench spaces does the same before its timings).
            conn.execute("vacuum analyze public.documents, public.document_chunks,"
                         " suparag_private.embedding_jobs")
            odd = time_model(embedder, groups[1::2], "bare model, odd batches", model_cpu,
                             threads)
            if worker_lanes > 1 and groups[1::2]:
                lanes_odd = time_lanes(embedder, groups[1::2], worker_lanes,
                                       f"bare model in {worker_lanes} lanes, odd batches",
                                       lanes_cpu, threads)
            if fp32 is not None:
                torch_odd = time_model(fp32, groups[1::2], "fp32 torch, odd batches")
        finally:
            if db_url is not None:
                remove_users(conn, [warm, user])
    one_call_seconds = even + odd
    lanes_seconds = lanes_even + lanes_odd if worker_lanes > 1 else None
    # The bare rate is the faster way of running the model: the goal is against it.
    in_lanes = lanes_seconds is not None and lanes_seconds < one_call_seconds
    bare_seconds = lanes_seconds if in_lanes and lanes_seconds else one_call_seconds
    bare_cpu = lanes_cpu[0] if in_lanes else model_cpu[0]  # the bare calls timed, in CPU-s
    model_rate, e2e_rate = chunks / bare_seconds, chunks / e2e_seconds
    ratio = e2e_rate / model_rate
    sizes = [len(t) for t in texts_per_doc]
    return {
        "bench": "worker",
        "docs": docs,
        "chunks": chunks,
        "chunks_per_doc": {"min": min(sizes), "mean": chunks / docs, "max": max(sizes)},
        "batch_size": batch_size,
        "token_budget": token_budget,
        "claim_budgets": claim_budgets,
        "warm_up_docs": warm_up_docs,
        "model": embedder.name,
        "backend": backend,
        # The int8 export measured: the one `suparag models quantize` made, or the packaged one.
        "model_file": getattr(embedder, "source", None),
        "worker": running.description,
        "database": "given --db-url" if db_url else "temporary embedded PostgreSQL",
        "torch_threads": threads,
        "lanes": worker_lanes,
        "model_seconds": bare_seconds,
        "model_chunks_per_s": model_rate,
        "model_in_lanes": in_lanes,
        # One call at a time on all cores, and in the worker's lanes (None with one lane).
        "model_one_call_chunks_per_s": chunks / one_call_seconds,
        "model_lanes_chunks_per_s": chunks / lanes_seconds if lanes_seconds else None,
        "ratio_to_one_call": e2e_rate / (chunks / one_call_seconds),
        "model_chunks_per_s_even_before": sum(map(len, groups[0::2])) / even,
        "model_chunks_per_s_odd_after": sum(map(len, groups[1::2])) / odd if odd else None,
        # --backend other than torch: fp32 torch's bare rate on the same calls, and ours over it.
        "torch_model_chunks_per_s": chunks / (torch_even + torch_odd) if fp32 else None,
        "model_over_torch": (torch_even + torch_odd) / bare_seconds if fp32 else None,
        "end_to_end_over_torch_model": ((torch_even + torch_odd) / e2e_seconds
                                        if fp32 else None),
        "end_to_end_seconds": e2e_seconds,
        "end_to_end_chunks_per_s": e2e_rate,
        "poll_ms": POLL_SECONDS * 1000,  # the longest between two reads of the status
        # CPU seconds during the end-to-end run, and what the bare model's calls took
        # on the same chunks: the worker's share beyond the model is its own overhead;
        # the database's share is what a database on its own machine would give back.
        "cpu_seconds": {**cores, "bare_model": bare_cpu},
        "ratio": ratio,
        # The most the ratio could be with the server's CPU as it was and nothing else
        # beside the model's calls on the same cores: the write-backs' HNSW inserts
        # (python -m bench.index_write) are work the bare model never does.
        "ceiling_with_database": ceiling(bare_cpu, cores["database"]),
        "goal_ratio": GOAL_RATIO,
        "pass": ratio >= GOAL_RATIO,
        "machine_before": before,
        "machine_after": machine(),
    }


def repeated(repeat: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """measure() (a run with its settings) repeat times in a row, each on its own documents
    (and its own temporary database, unless given one); every run's figures and the
    ratios' median.

    On a machine whose speed moves between runs (this one: ratios 0.65-0.94 within an
    hour, README), one ratio says little about the goal; the median of several does."""
    if repeat < 1:
        raise BenchError("--repeat must be at least 1")
    runs = []
    for i in range(repeat):
        err_console.print(f"run {i + 1} of {repeat}")
        runs.append(measure())
    ratios = [r["ratio"] for r in runs]
    median = statistics.median(ratios)
    return {
        "bench": "worker",
        "repeat": repeat,
        "runs": runs,
        "ratios": ratios,
        "ratio_median": median,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "goal_ratio": GOAL_RATIO,
        "pass": median >= GOAL_RATIO,
    }


def print_repeated(r: dict[str, Any]) -> None:
    """Each run's figures, then the ratios and their median."""
    for i, one in enumerate(r["runs"], 1):
        print(f"\n-- run {i} of {r['repeat']}")
        print_report(one)
    verdict = "PASS" if r["pass"] else "MISS"
    print(f"\nratios       {', '.join(f'{x:.3f}' for x in r['ratios'])}")
    print(f"median       {r['ratio_median']:8.3f}  (goal >= {r['goal_ratio']}: {verdict})")


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    per = r["chunks_per_doc"]
    print(f"\n{r['docs']} documents, {r['chunks']} chunks ({per['min']}-{per['max']} per "
          f"document, mean {per['mean']:.1f}), model {r['model']}, "
          f"torch threads {r['torch_threads']}")
    print(f"worker: {r['worker']}; database: {r['database']}")
    if r.get("model_file"):
        print(f"model file: {r['model_file']}")
    after = r["model_chunks_per_s_odd_after"]
    way = f"in {r['lanes']} lanes" if r["model_in_lanes"] else "one call at a time"
    print(f"bare model   {r['model_chunks_per_s']:8.1f} chunks/s  ({r['model_seconds']:.2f} s, "
          f"{way}: the faster)")
    print(f"  one call at a time on all cores {r['model_one_call_chunks_per_s']:.1f} chunks/s "
          f"(even batches before {r['model_chunks_per_s_even_before']:.1f}, odd after "
          f"{'-' if after is None else f'{after:.1f}'})")
    if r["model_lanes_chunks_per_s"]:
        print(f"  in {r['lanes']} lanes, a thread each {r['model_lanes_chunks_per_s']:.1f} "
              f"chunks/s")
    print(f"end to end   {r['end_to_end_chunks_per_s']:8.1f} chunks/s  "
          f"({r['end_to_end_seconds']:.2f} s, commit to all ready, read at each "
          f"write-back)")
    if r.get("torch_model_chunks_per_s"):
        print(f"fp32 torch   {r['torch_model_chunks_per_s']:8.1f} chunks/s  (bare, same calls): "
              f"{r['backend']} bare {r['model_over_torch']:.2f}x, end to end "
              f"{r['end_to_end_over_torch_model']:.2f}x torch's bare rate")
    c = r["cpu_seconds"]
    print(f"CPU seconds  of {c['cores']} cores x {c['wall_seconds']:.1f} s: worker "
          f"{_seconds(c['worker'])} (the bare model took {c['bare_model']:.1f} on the same "
          f"chunks), database {_seconds(c['database'])}, bench {c['bench']:.1f}, "
          f"idle {c['idle']:.1f}; all busy {c['busy']:.1f}")
    verdict = "PASS" if r["pass"] else "MISS"
    print(f"ratio        {r['ratio']:8.3f}  (goal >= {r['goal_ratio']}: {verdict}; "
          f"{r['ratio_to_one_call']:.3f} of one call at a time)")
    if r.get("ceiling_with_database") is not None:
        print(f"ceiling      {r['ceiling_with_database']:8.3f}  (the bare model's CPU beside the "
              f"database's: the most with nothing else on the cores)")
    print_load(r)


def ceiling(model_cpu: float, database_cpu: float | None) -> float | None:
    """The end-to-end ratio if the cores did the model's calls and the server's work
    (database_cpu) and nothing else: model / (model + database), in CPU seconds."""
    if database_cpu is None or model_cpu <= 0:
        return None
    return model_cpu / (model_cpu + database_cpu)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200, help="documents to embed")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_CLAIM_DOCUMENTS,
                        help="the most documents a worker's claim takes")
    parser.add_argument("--token-budget", type=int, default=DEFAULT_TOKEN_BUDGET,
                        help="padded tokens per model call (worker and bare model)")
    parser.add_argument("--claim-budgets", type=int, default=DEFAULT_CLAIM_BUDGETS,
                        help="token budgets of documents one claim takes")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx-int8"])
    parser.add_argument("--lanes", type=int, help="the worker's --lanes (default: its own)")
    parser.add_argument("--warm-up-docs", type=int,
                        help=f"documents the worker embeds before the clock (default: --docs, "
                             f"at most {WARM_UP_DOCS})")
    parser.add_argument("--in-process", action="store_true",
                        help="run the worker on a thread here instead of `suparag worker`")
    parser.add_argument("--db-url", help="a database to use (default: a temporary server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(docs=args.docs, batch_size=args.batch_size, in_process=args.in_process,
                 db_url=args.db_url, backend=args.backend, token_budget=args.token_budget,
                 claim_budgets=args.claim_budgets, lanes=args.lanes,
                 warm_up_docs=args.warm_up_docs)
    emit(result, args.json, print_report)


if __name__ == "__main__":
    main()
