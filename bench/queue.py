"""Many workers on one queue: what the database can feed them (issue 17, "Many workers").

    suparag bench queue [--workers 8] [--docs 2000] [--batch-size 16] [--json]

On a temporary embedded PostgreSQL, for N = 1, 2, 4, ... up to --workers:

1. N real `suparag worker --only embeddings` processes start, configured with
   the OpenAI-compatible embedder pointing at `bench.embedding_double` in
   `fixed` mode (no faults; every text gets one precomputed vector), so the
   model costs nothing and what is measured is the queue, the chunker and
   the write-back. The bench waits until each answers /health/ready.
2. --docs documents (1-6 chunks each) are inserted as a user in one
   transaction. The clock runs from the COMMIT's return until every one of
   them is `ready`: documents/s and chunks/s.
3. Meanwhile, every SAMPLE_SECONDS: pg_stat_activity's active client backends
   and their wait events (lock waits: wait_event_type `Lock`; ungranted
   pg_locks), and the CPU time of every postgres process and every worker
   process (psutil, from /proc), so the database's CPU share is
   (its CPU seconds) / (wall seconds x cores).
4. The claim's latency: each worker logs one JSON line per batch
   (`--log-format json`) with `claim_ms`, the client's time for
   `claim_embedding_jobs`; p50/p95 over all batches. pg_stat_statements'
   mean for the same call, server side, beside it; and its top statements
   by total time, which is where a wall shows first.
5. The check: a bench-only trigger counts every write-back (a documents row
   set `ready`), so every document must have been written exactly once; the
   double counts every text it was sent, so no chunk text went to the model
   twice; the stored chunks must equal the distinct texts sent; the queue
   must be empty. Any miss is a violation (reported; the CLI exits 1).

Goal on a 2-core machine: >= 500 documents/s (about 50x the local model).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import IO, Any

import psutil
import psycopg

from bench._common import (
    ServerCpu,
    bench_user,
    emit,
    err_console,
    insert_documents,
    machine,
    make_documents,
    pct,
    print_load,
    progress,
)
from bench.embedding_double import MODEL, DoubleState, Faults, serve
from cli._common import cli_command
from worker import schema
from worker.db import connect
from worker.devstack.postgres import LocalPostgres, free_port
from worker.errors import BenchError

Conn = psycopg.Connection[dict[str, Any]]

GOAL_DOCS_PER_S = 500.0
SAMPLE_SECONDS = 0.05
API_KEY = "sk-queue-bench-local"

#: Bench-only: one row per write-back, so "written exactly once" is a count.
WRITE_COUNTER = """
create schema if not exists bench_queue;
create table if not exists bench_queue.writes (document_id uuid not null);
create or replace function bench_queue.count_write() returns trigger
language plpgsql set search_path = '' as $$
begin
  insert into bench_queue.writes (document_id) values (new.id);
  return null;
end $$;
drop trigger if exists bench_queue_count_write on public.documents;
create trigger bench_queue_count_write
  after update of embedding_status on public.documents
  for each row when (new.embedding_status = 'ready')
  execute function bench_queue.count_write();
"""


def worker_counts(top: int) -> list[int]:
    """1, 2, 4, ... below top, then top itself."""
    counts, n = [], 1
    while n < top:
        counts.append(n)
        n *= 2
    return [*counts, top]


class Workers:
    """N `suparag worker` processes with JSON logs, ready-checked over /health/ready."""

    def __init__(self, n: int, db_url: str, base_url: str, logs: Path, *,
                 batch_size: int) -> None:
        env = dict(os.environ)
        env.update(SUPARAG_EMBEDDING_PROVIDER="openai", SUPARAG_EMBEDDING_MODEL=MODEL,
                   SUPARAG_OPENAI_API_KEY=API_KEY, SUPARAG_OPENAI_BASE_URL=base_url)
        self.ports = [free_port() for _ in range(n)]
        self.log_paths = [logs / f"worker-{n}-{i}.log" for i in range(n)]
        self._logs: list[IO[bytes]] = [p.open("wb") for p in self.log_paths]
        self.procs = [
            subprocess.Popen(
                cli_command("worker", "--only", "embeddings", "--batch-size", str(batch_size),
                            "--http-port", str(port), "--log-format", "json",
                            "--db-url", db_url),
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            for port, log in zip(self.ports, self._logs, strict=True)
        ]
        self.ps = [psutil.Process(p.pid) for p in self.procs]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.ports)
        while pending:
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{len(pending)} workers not ready after {timeout:.0f} s:\n"
                                 f"{self.log_tail()}")
            for port in list(pending):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready",
                                                timeout=2) as reply:
                        if reply.status == 200:
                            pending.discard(port)
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.1)

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"a worker exited with code {proc.returncode}:\n"
                                 f"{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        for log in self._logs:
            log.flush()
        text = "\n".join(p.read_text(errors="replace") for p in self.log_paths)
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.ps:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()

    def batches(self) -> list[dict[str, Any]]:
        """Every batch line the workers logged."""
        found = []
        for path in self.log_paths:
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("event") == "batch":
                        found.append(entry)
        return found


class Sampler(threading.Thread):
    """Every SAMPLE_SECONDS: wait events of active client backends, and postgres' CPU."""

    def __init__(self, db_url: str, postmaster: int) -> None:
        super().__init__(name="queue-bench-sampler", daemon=True)
        self.db_url, self.server = db_url, ServerCpu(postmaster)
        self.stopping = threading.Event()
        self.samples = 0
        self.active: list[int] = []
        self.lock_waits: list[int] = []
        self.ungranted: list[int] = []
        self.events: Counter[str] = Counter()

    def cpu_seconds(self) -> float:
        return self.server.seconds()

    def run(self) -> None:
        with connect(self.db_url, autocommit=True) as conn:
            while not self.stopping.is_set():
                self.server.sample()
                rows = conn.execute(
                    "select coalesce(wait_event_type || ':' || wait_event, 'cpu') as ev,"
                    " count(*) as n from pg_stat_activity"
                    " where backend_type = 'client backend' and state = 'active'"
                    " and pid <> pg_backend_pid() group by 1").fetchall()
                ungranted = conn.execute(
                    "select count(*) as n from pg_locks where not granted").fetchone()
                self.samples += 1
                self.active.append(sum(int(r["n"]) for r in rows))
                self.lock_waits.append(sum(int(r["n"]) for r in rows
                                           if str(r["ev"]).startswith("Lock:")))
                self.ungranted.append(int(ungranted["n"]) if ungranted else 0)
                for r in rows:
                    self.events[str(r["ev"])] += int(r["n"])
                self.stopping.wait(SAMPLE_SECONDS)
            self.server.sample()


def _statements(conn: Conn, top: int = 6) -> list[dict[str, Any]]:
    rows = conn.execute(
        "select left(regexp_replace(query, '\\s+', ' ', 'g'), 110) as query, calls,"
        " round(total_exec_time::numeric, 1) as total_ms,"
        " round(mean_exec_time::numeric, 3) as mean_ms"
        " from extensions.pg_stat_statements"
        " where dbid = (select oid from pg_database where datname = current_database())"
        " and query not ilike '%%pg_stat%%' and query not ilike '%%bench_queue%%'"
        " order by total_exec_time desc limit %s", (top,)).fetchall()
    return [dict(r) for r in rows]


def _claim_server_ms(conn: Conn) -> dict[str, Any] | None:
    row = conn.execute(
        "select sum(calls) as calls, sum(total_exec_time) / nullif(sum(calls), 0) as mean_ms,"
        " max(max_exec_time) as max_ms from extensions.pg_stat_statements"
        " where query like '%claim_embedding_jobs%' and query not ilike '%pg_stat%'"
    ).fetchone()
    if not row or not row["calls"]:
        return None
    return {"calls": int(row["calls"]), "mean_ms": round(float(row["mean_ms"]), 3),
            "max_ms": round(float(row["max_ms"]), 3)}


def _round(conn: Conn, url: str, base_url: str, state: DoubleState, postmaster: int,
           logs: Path, *, n: int, docs: int, batch_size: int, seed: int) -> dict[str, Any]:
    """One N: start N workers, insert, time to all ready, check, stop."""
    tag = uuid.uuid4().hex[:8]
    corpus = [d.__class__(title=f"[{tag}] {d.title}", content=d.content)
              for d in make_documents(docs, seed=seed + n)]
    user = bench_user(conn, f"bench-queue-{tag}")
    workers = Workers(n, url, base_url, logs, batch_size=batch_size)
    try:
        workers.wait_ready()
        conn.execute("select extensions.pg_stat_statements_reset()")
        with state.lock:
            sent_before = Counter(state.calls_per_text)
        sampler = Sampler(url, postmaster)
        sampler.start()
        time.sleep(SAMPLE_SECONDS * 2)  # a first CPU reading before the clock starts
        worker_cpu = workers.cpu_seconds()
        ids = insert_documents(conn, user, corpus)  # commits
        started = time.perf_counter()
        with progress() as bar:
            task = bar.add_task(f"{n} worker{'s' * (n > 1)}", total=docs)
            deadline = time.monotonic() + max(120.0, docs / 5)
            while True:
                row = conn.execute(
                    "select count(*) filter (where embedding_status = 'ready') as ready,"
                    " count(*) filter (where embedding_status = 'failed') as failed"
                    " from public.documents where owner_id = %s", (user.id,)).fetchone()
                assert row is not None
                bar.update(task, completed=int(row["ready"]))
                if int(row["ready"]) + int(row["failed"]) == docs:
                    break
                workers.check()
                if time.monotonic() > deadline:
                    raise BenchError(f"{n} workers: timed out with {row['ready']} of {docs} "
                                     "documents ready")
                time.sleep(0.01)
        seconds = time.perf_counter() - started
        worker_cpu = workers.cpu_seconds() - worker_cpu
        sampler.stopping.set()
        sampler.join()
        statements = _statements(conn)
        claim_server = _claim_server_ms(conn)
    finally:
        workers.stop()
    batches = workers.batches()
    claims = [float(b["claim_ms"]) for b in batches if b.get("claim_ms") is not None]
    violations = _check(conn, ids, state, sent_before, failed=int(row["failed"]))
    chunk_row = conn.execute("select count(*) as n from public.document_chunks"
                             " where document_id = any(%s)", (ids,)).fetchone()
    chunks = int(chunk_row["n"]) if chunk_row else 0
    conn.execute("delete from auth.users where id = %s", (user.id,))
    conn.execute("vacuum analyze public.documents, public.document_chunks,"
                 " suparag_private.embedding_jobs")
    cores = os.cpu_count() or 1
    return {
        "workers": n,
        "docs": docs,
        "chunks": chunks,
        "seconds": seconds,
        "docs_per_s": docs / seconds,
        "chunks_per_s": chunks / seconds,
        "batches": len(batches),
        "db_cpu_share": sampler.cpu_seconds() / (seconds * cores),
        "workers_cpu_share": worker_cpu / (seconds * cores),
        "active_backends_mean": sum(sampler.active) / max(1, sampler.samples),
        "lock_waits_mean": sum(sampler.lock_waits) / max(1, sampler.samples),
        "lock_wait_samples": sum(1 for x in sampler.lock_waits if x),
        "ungranted_locks_max": max(sampler.ungranted, default=0),
        "samples": sampler.samples,
        "wait_events": dict(sampler.events.most_common(6)),
        "claim_ms": {"p50": pct(claims, 50), "p95": pct(claims, 95), "max": max(claims)}
        if claims else None,
        "claim_server_ms": claim_server,
        "top_statements": statements,
        "violations": violations,
    }


def _check(conn: Conn, ids: list[uuid.UUID], state: DoubleState, sent_before: Counter[str],
           *, failed: int) -> list[str]:
    """Every document written exactly once; no text sent twice; the chunks are the texts."""
    violations = []
    if failed:
        violations.append(f"{failed} documents failed")
    rows = conn.execute(
        "select d.id, count(w.document_id) as writes from public.documents d"
        " left join bench_queue.writes w on w.document_id = d.id"
        " where d.id = any(%s) group by d.id", (ids,)).fetchall()
    writes = Counter(int(r["writes"]) for r in rows)
    if set(writes) != {1} or len(rows) != len(ids):
        violations.append(f"write-backs per document {dict(writes)} over {len(rows)} of "
                          f"{len(ids)} documents (each must be written exactly once)")
    with state.lock:
        sent = state.calls_per_text - sent_before
    twice = sum(1 for count in sent.values() if count > 1)
    if twice:
        violations.append(f"{twice} chunk texts were sent to the model more than once")
    row = conn.execute("select count(*) as n from public.document_chunks"
                       " where document_id = any(%s)", (ids,)).fetchone()
    if row is None or int(row["n"]) != len(sent):
        violations.append(f"{row['n'] if row else 0} chunks stored for {len(sent)} distinct "
                          "texts embedded")
    queued = conn.execute("select count(*) as n from suparag_private.embedding_jobs"
                          " where document_id = any(%s)", (ids,)).fetchone()
    if queued and int(queued["n"]):
        violations.append(f"{queued['n']} jobs left in the queue")
    return violations


def run(*, workers: int = 8, docs: int = 2000, batch_size: int = 16,
        seed: int = 17) -> dict[str, Any]:
    """Measure every N once; the figures as a dict (see print_report)."""
    if docs < 1 or workers < 1:
        raise BenchError("--docs and --workers must be at least 1")
    before = machine()
    home = Path(tempfile.mkdtemp(prefix="suparag-queue-bench-"))
    server = LocalPostgres(home / "pg", port=free_port())
    state = DoubleState(faults=Faults(), enabled=False, fixed=True)
    rounds = []
    try:
        err_console.print("starting a temporary embedded PostgreSQL…")
        url = server.start().url
        status = server.status()
        assert status is not None
        with connect(url, autocommit=True) as conn, serve(state) as base_url:
            schema.apply_standin(conn)
            schema.push(conn)
            conn.execute(WRITE_COUNTER)
            (home / "logs").mkdir()
            for n in worker_counts(workers):
                rounds.append(_round(conn, url, base_url, state, status.pid, home / "logs",
                                     n=n, docs=docs, batch_size=batch_size, seed=seed))
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    best = max(r["docs_per_s"] for r in rounds)
    return {
        "bench": "queue",
        "docs": docs,
        "batch_size": batch_size,
        "embedder": "bench.embedding_double (fixed vectors, no faults) over HTTP",
        "rounds": rounds,
        "best_docs_per_s": best,
        "scaling": {str(r["workers"]): r["docs_per_s"] / rounds[0]["docs_per_s"]
                    for r in rounds},
        "goal_docs_per_s": GOAL_DOCS_PER_S,
        "pass": best >= GOAL_DOCS_PER_S,
        "violations": [f"N={r['workers']}: {v}" for r in rounds for v in r["violations"]],
        "machine_before": before,
        "machine_after": machine(),
    }


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    print(f"\n{r['docs']} documents per round, batch size {r['batch_size']}; embedder: "
          f"{r['embedder']}")
    print(f"{'N':>3} {'docs/s':>8} {'chunks/s':>9} {'x N=1':>6} {'db cpu':>7} {'workers':>8} "
          f"{'active':>7} {'lockw':>6} {'claim p50':>10} {'p95 ms':>7}")
    for x in r["rounds"]:
        claim = x["claim_ms"] or {"p50": float("nan"), "p95": float("nan")}
        print(f"{x['workers']:>3} {x['docs_per_s']:>8.0f} {x['chunks_per_s']:>9.0f} "
              f"{r['scaling'][str(x['workers'])]:>6.2f} {x['db_cpu_share']:>7.0%} "
              f"{x['workers_cpu_share']:>8.0%} {x['active_backends_mean']:>7.2f} "
              f"{x['lock_waits_mean']:>6.2f} {claim['p50']:>10.2f} {claim['p95']:>7.2f}")
    last = r["rounds"][-1]
    print(f"\nwait events at N={last['workers']} (backend-samples): {last['wait_events']}")
    print(f"top statements at N={last['workers']} by total time:")
    for s in last["top_statements"]:
        print(f"  {s['total_ms']:>9} ms {s['calls']:>7} calls  {s['query']}")
    verdict = "PASS" if r["pass"] else "MISS"
    print(f"best {r['best_docs_per_s']:.0f} documents/s (goal >= {r['goal_docs_per_s']:.0f}: "
          f"{verdict}); violations: {len(r['violations'])}")
    for v in r["violations"]:
        print(f"  {v}")
    print_load(r)


def plot(r: dict[str, Any], path: Path) -> None:
    """The scaling curve as a PNG: documents/s and the database's CPU share per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [x["workers"] for x in r["rounds"]]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(ns, [x["docs_per_s"] for x in r["rounds"]], "o-", label="documents/s")
    ax.axhline(r["goal_docs_per_s"], color="grey", linestyle=":", label="goal")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("worker processes on one queue")
    ax.set_ylabel("documents/s")
    share = ax.twinx()
    share.plot(ns, [100 * x["db_cpu_share"] for x in r["rounds"]], "s--", color="tab:red",
               label="database CPU %")
    share.set_ylabel("database CPU % of the machine")
    share.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + share.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper left", fontsize=8)
    load = r["machine_before"]["load"][0]
    ax.set_title(f"suparag bench queue: {r['docs']} documents/round, "
                 f"{r['machine_after']['cpus']} cores, load {load}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(run(workers=args.workers, docs=args.docs, batch_size=args.batch_size), args.json,
         print_report)


if __name__ == "__main__":
    main()
