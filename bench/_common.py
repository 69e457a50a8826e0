"""What the benchmarks share: a database to run on, a corpus, the worker under test, figures.

Each benchmark starts its own embedded PostgreSQL in a temporary folder unless
given a database URL, measures once, and prints figures and ratios; none of
them is a pass/fail test.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli._common import cli_command
from worker import schema
from worker.db import as_request, connect
from worker.devstack.postgres import LocalPostgres, free_port
from worker.errors import BenchError
from worker.jobs.batching import DEFAULT_CLAIM_BUDGETS, DEFAULT_TOKEN_BUDGET
from worker.jobs.chunking import chunk_document
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.jobs.service import Service, ServiceConfig
from worker.models.base import Embedder
from worker.models.onnx import split_backend
from worker.users import User, add_user

Conn = psycopg.Connection[dict[str, Any]]

#: Progress bars and notes go here, so stdout holds only the figures (or the JSON).
err_console = Console(stderr=True)


# -- figures ---------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation, as numpy does)."""
    return float(np.percentile(values, q))


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, max and mean of values."""
    return {"p50": pct(values, 50), "p95": pct(values, 95), "max": float(max(values)),
            "mean": float(np.mean(values))}


def machine() -> dict[str, Any]:
    """What else was going on: cores and the load average (1, 5, 15 min) right now."""
    return {"cpus": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}


def print_json(data: Any) -> None:
    """The result as JSON on stdout."""
    print(json.dumps(data, indent=2, default=str))


def print_load(r: dict[str, Any]) -> None:
    """The report's last line: the load average around the run (from machine())."""
    print(f"load average before {r['machine_before']['load']}, after "
          f"{r['machine_after']['load']} on {r['machine_after']['cpus']} cores")


def emit(result: dict[str, Any], as_json: bool,
         report: Callable[[dict[str, Any]], None]) -> None:
    """A bench's result: JSON on stdout, or its report for people."""
    if as_json:
        print_json(result)
    else:
        report(result)


def progress() -> Progress:
    """A transient progress bar on stderr, redrawn twice a second (rich's default, ten
    times, took CPU from the cores a bench measures)."""
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=err_console,
                    transient=True, refresh_per_second=2)


# -- a database ------------------------------------------------------------------------------

@contextmanager
def bench_database(db_url: str | None, *,
                   settings: dict[str, str] | None = None) -> Iterator[str]:
    """A migrated database: db_url, or a temporary embedded server removed afterwards.

    settings are postgresql.conf values for the temporary server (none: the
    defaults `suparag dev` runs with). A given database gets the local
    Supabase stand-in only if it has no `auth.users` (an empty database), and
    any pending migrations.
    """
    server, home = None, None
    url = db_url
    if url is None:
        home = Path(tempfile.mkdtemp(prefix="suparag-bench-"))
        server = LocalPostgres(home, port=free_port(), settings=settings)
        err_console.print("starting a temporary embedded PostgreSQL…")
        url = server.start().url
    try:
        with connect(url, autocommit=True) as conn:
            found = conn.execute("select to_regclass('auth.users') is not null as ok").fetchone()
            if not (found and found["ok"]):
                schema.apply_standin(conn)
            schema.push(conn)
        yield url
    finally:
        if server is not None:
            server.stop()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)


# -- a corpus --------------------------------------------------------------------------------

_TOPICS = ["deployment", "billing", "search", "backups", "onboarding", "permissions",
           "latency", "ingestion", "failover", "pricing", "retention", "alerts"]
_NOUNS = ["service", "database", "customer", "request", "replica", "invoice", "team", "index",
          "queue", "worker", "dashboard", "policy", "region", "release", "schema", "token",
          "document", "cluster", "account", "report", "contract", "budget", "migration",
          "connection", "cache", "ticket", "incident", "deadline", "partner", "metric"]
_VERBS = ["updates", "checks", "rejects", "stores", "reads", "schedules", "retries", "sends",
          "approves", "reviews", "measures", "restores", "splits", "merges", "tracks", "limits"]
_ADJECTIVES = ["new", "primary", "stale", "private", "shared", "weekly", "slow", "urgent",
               "regional", "default", "external", "manual", "nightly", "critical", "annual"]
_TAILS = ["before the end of the quarter", "when the load is high", "for every new account",
          "unless the owner objects", "after the nightly backup", "within two business days",
          "during the maintenance window", "as the runbook describes",
          "if the previous attempt failed", "once legal has signed off"]


@dataclass(frozen=True)
class Doc:
    """A generated document."""

    title: str
    content: str


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(["The", "Each", "Our", "Every", "A"]), rng.choice(_ADJECTIVES),
             rng.choice(_NOUNS), rng.choice(_VERBS), "the", rng.choice(_ADJECTIVES),
             rng.choice(_NOUNS)]
    if rng.random() < 0.6:
        words.append(rng.choice(_TAILS))
    if rng.random() < 0.3:
        words += ["and", rng.choice(_VERBS), "its", rng.choice(_NOUNS), "again"]
    return " ".join(words) + rng.choice([".", ".", ".", "!", "?"])


def make_documents(n: int, *, seed: int, paragraphs: tuple[int, int] = (1, 14)) -> list[Doc]:
    """n markdown documents of paragraphs[0]-paragraphs[1] paragraphs of 3-7 sentences.

    The default, 1-14, makes 1-6 chunks of all-MiniLM-L6-v2 (254 tokens).
    Deterministic for a seed: the same texts every run.
    """
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        topic = rng.choice(_TOPICS)
        subject = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        title = f"{topic.capitalize()} notes {i}: the {subject}"
        parts = []
        for p in range(rng.randint(*paragraphs)):
            if p and rng.random() < 0.25:
                parts.append(f"## {rng.choice(_ADJECTIVES).capitalize()} {rng.choice(_NOUNS)}s")
            parts.append(" ".join(_sentence(rng) for _ in range(rng.randint(3, 7))))
        docs.append(Doc(title=title, content="\n\n".join(parts)))
    return docs


def embed_texts(embedder: Embedder, doc: Doc) -> list[str]:
    """The texts the worker gives the model for doc: the same chunk_document call."""
    chunks = chunk_document(doc.title, doc.content, max_tokens=embedder.max_tokens,
                            count_tokens=embedder.count_tokens,
                            split_tokens=embedder.split_tokens)
    return [c.embed_text for c in chunks]


def bench_user(conn: Conn, name: str) -> User:
    """The user owning a benchmark's documents (created if missing), committed."""
    user = add_user(conn, f"{name}@bench.local", team="bench")
    conn.commit()
    return user


def insert_documents(conn: Conn, user: User, docs: Sequence[Doc]) -> list[uuid.UUID]:
    """Insert docs as user (role authenticated), in one transaction; their ids, in order."""
    ids = [uuid.uuid4() for _ in docs]
    with as_request(conn, user.claims()), conn.cursor() as cur:
        cur.executemany(
            "insert into public.documents (id, owner_id, team, visibility, title, content)"
            " values (%s, %s, 'bench', 'team', %s, %s)",
            [(i, user.id, d.title, d.content) for i, d in zip(ids, docs, strict=True)],
        )
    return ids


def status_counts(conn: Conn, user: User) -> tuple[int, int]:
    """(ready, failed) among user's documents."""
    row = conn.execute(
        "select count(*) filter (where embedding_status = 'ready') as ready,"
        " count(*) filter (where embedding_status = 'failed') as failed"
        " from public.documents where owner_id = %s", (user.id,)).fetchone()
    assert row is not None
    return int(row["ready"]), int(row["failed"])


def remove_users(conn: Conn, users: Sequence[User]) -> None:
    """Remove the benchmark's users from a given database, and so their documents and chunks."""
    conn.execute("delete from auth.users where id = any(%s)", ([u.id for u in users],))


def check_queue_empty(conn: Conn) -> None:
    """BenchError if jobs are queued: the worker would embed them too and skew the figures."""
    row = conn.execute("select count(*) as n from suparag_private.embedding_jobs"
                       " where status = 'queued'").fetchone()
    if row and row["n"]:
        raise BenchError(f"that database has {row['n']} queued embedding jobs: drain them "
                         "first (`suparag worker --once --db-url ...`) so the worker under "
                         "test embeds only the benchmark's documents")


# -- the worker under test -------------------------------------------------------------------

class RunningWorker:
    """The embedding worker being measured, from start to stop.

    By default the real `suparag worker` command in a process of its own
    (what an operator runs); in_process runs a Service on a thread
    of this process instead, sharing this process's loaded model.
    """

    def __init__(self, db_url: str, embedder: Embedder, *, batch_size: int,
                 in_process: bool, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 claim_budgets: int = DEFAULT_CLAIM_BUDGETS, lanes: int | None = None) -> None:
        self.db_url, self.embedder = db_url, embedder
        self.batch_size, self.in_process = batch_size, in_process
        self.token_budget, self.claim_budgets = token_budget, claim_budgets
        self.lanes = lanes  # None: the worker's default (worker/models/lanes.py)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._service: Service | None = None
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        lanes = "" if self.lanes is None else f" --lanes {self.lanes}"
        if self.in_process:
            return (f"Service on a thread of this process, batch size {self.batch_size}, "
                    f"token budget {self.token_budget}, claim budgets {self.claim_budgets}, "
                    f"lanes {self.lanes or 'default'}")
        return (f"`suparag worker --batch-size {self.batch_size} --token-budget "
                f"{self.token_budget} --claim-budgets {self.claim_budgets}{lanes}` in its own "
                "process")

    def __enter__(self) -> RunningWorker:
        if self.in_process:
            self._service = Service(
                [EmbeddingWorker(self.db_url, self.embedder,
                                 config=WorkerConfig(batch_size=self.batch_size),
                                 token_budget=self.token_budget,
                                 claim_budgets=self.claim_budgets, lanes=self.lanes)],
                service=ServiceConfig())
            self._thread = threading.Thread(target=self._service.run, name="bench-worker",
                                            daemon=True)
            self._thread.start()
            return self
        env = dict(os.environ)
        # The model the bench loaded, whatever SUPARAG_* or .env say.
        model, backend = split_backend(self.embedder.name)
        env.update(SUPARAG_EMBEDDING_PROVIDER="sentence-transformers",
                   SUPARAG_EMBEDDING_MODEL=model, SUPARAG_EMBEDDING_BACKEND=backend)
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cli_command("worker", "--batch-size", str(self.batch_size), "--token-budget",
                        str(self.token_budget), "--claim-budgets", str(self.claim_budgets),
                        *([] if self.lanes is None else ["--lanes", str(self.lanes)]),
                        "--db-url", self.db_url),
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def check(self) -> None:
        """Raise BenchError if the worker has stopped by itself."""
        if self._proc is not None and self._proc.poll() is not None:
            raise BenchError(f"the worker exited with code {self._proc.returncode}:\n"
                             f"{self._log_tail()}")
        if self._thread is not None and not self._thread.is_alive():
            raise BenchError("the in-process worker stopped; see the log above")

    def cpu_seconds(self) -> float | None:
        """CPU seconds the worker's process has used (None in process: it shares ours)."""
        if self._proc is None:
            return None
        try:
            times = psutil.Process(self._proc.pid).cpu_times()
        except psutil.Error:
            return None
        return float(times.user + times.system)

    def _log_tail(self, lines: int = 15) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def __exit__(self, *exc: object) -> None:
        if self._service is not None and self._thread is not None:
            self._service.stop()
            self._thread.join(timeout=60)
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._log.close()


class ServerCpu:
    """CPU seconds a PostgreSQL server's processes (the postmaster and its children)
    used between the first sample() and the last. A backend or autovacuum worker
    born in between counts from zero; one that exits between two samples keeps
    what it had used at the last sample, so sample at least every second."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = psutil.Process(postmaster)
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def sample(self) -> None:
        procs = [self.postmaster]
        with contextlib.suppress(psutil.Error):
            procs += self.postmaster.children(recursive=True)
        # What the processes alive at the first sample had used before it is not counted.
        # (bench queue's copy of this decided "first" per process and so counted, for all
        # but one process of the first sample, everything it had used since it started.)
        first = not self._first
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                used = times.user + times.system
                self._first.setdefault(proc.pid, used if first else 0.0)
                self._last[proc.pid] = used

    def seconds(self) -> float:
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


def local_postmaster(conn: Any) -> int | None:
    """The PID of the server conn is connected to, if it runs on this machine."""
    row = conn.execute("select pg_backend_pid() as pid").fetchone()
    try:
        backend = psutil.Process(int(row["pid"]))
        parent = backend.parent()
    except (psutil.Error, TypeError, KeyError):
        return None
    if parent is None or not backend.name().startswith("postgres"):
        return None
    return int(parent.pid)


def busy_and_idle() -> tuple[float, float]:
    """The machine's CPU seconds since boot, all cores: (busy, idle)."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0), idle


def wait_until(done: Callable[[], bool], *, worker: RunningWorker, timeout: float,
               interval: float, what: str,
               pause: Callable[[float], object] = time.sleep) -> None:
    """Poll done() every interval seconds (or when pause(interval) returns early: a
    StatusSignal's wait); BenchError on timeout or a dead worker."""
    deadline = time.monotonic() + timeout
    while not done():
        worker.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        pause(interval)


#: Bench-only: a notification whenever a statement changes documents' embedding_status
#: (a write-back, a failure), so a bench waiting for documents to be ready reads their
#: status when one changed, not every few milliseconds (StatusSignal).
_STATUS_SIGNAL = """
create schema if not exists bench_status;
create or replace function bench_status.signal() returns trigger
language plpgsql set search_path = '' as $$
begin
  perform pg_notify('bench_status', '');
  return null;
end $$;
drop trigger if exists bench_status_signal on public.documents;
create trigger bench_status_signal after update of embedding_status on public.documents
  for each statement execute function bench_status.signal();
"""


class StatusSignal:
    """Wakes a bench when documents' embedding status changes: a statement-level trigger
    (one notification per write-back transaction, not per row) and a LISTEN connection,
    both removed on exit. Polled every 100 ms instead, a 3,000-document run spent 2.8
    CPU-s in the bench and 0.9 in the server answering it (0.38 ms a poll), on the
    cores the worker was measured on; and the end was seen up to a poll late."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._listen: Conn | None = None

    def __enter__(self) -> StatusSignal:
        with connect(self.db_url, autocommit=True) as conn:
            conn.execute(_STATUS_SIGNAL)
        self._listen = connect(self.db_url, autocommit=True)
        self._listen.execute("listen bench_status")
        return self

    def wait(self, timeout: float) -> bool:
        """Block until a status changed (True), or timeout seconds pass (False)."""
        assert self._listen is not None, "use StatusSignal as a context manager"
        heard = False
        for _ in self._listen.notifies(timeout=timeout, stop_after=1):
            heard = True
        # Drain what else came meanwhile: one read of the status answers all of them.
        for _ in self._listen.notifies(timeout=0):
            pass
        return heard

    def __exit__(self, *exc: object) -> None:
        if self._listen is not None:
            self._listen.close()
        with connect(self.db_url, autocommit=True) as conn:
            conn.execute("drop schema if exists bench_status cascade")


def warm_up(conn: Conn, worker: RunningWorker, user: User, *, docs: int,
            paragraphs: tuple[int, int] = (1, 4)) -> None:
    """Have the worker load its model and embed a few batches, then let it go idle.

    Afterwards the worker waits on LISTEN with nothing to do, as a deployed
    worker does between changes.
    """
    err_console.print("warming up the worker (model load, first batches)…")
    insert_documents(conn, user, make_documents(docs, seed=999, paragraphs=paragraphs))

    def all_ready() -> bool:
        ready, failed = status_counts(conn, user)
        if failed:
            raise BenchError(f"{failed} warm-up documents failed to embed")
        return ready == docs

    wait_until(all_ready, worker=worker, timeout=300, interval=0.05, what="the warm-up")
    time.sleep(1.0)  # idle: any leftover wake-up has been handled
    worker.check()
