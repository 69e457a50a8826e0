"""Chaos: the embedding guarantees under faults (issue 14, "Proof under faults").

    suparag bench chaos [--seconds 120] [--workers 2] [--restarts 2] [--json]

Loopback only and bounded. On a temporary embedded PostgreSQL:

- `--workers` real `suparag worker --only embeddings` processes share the
  queue, configured with the OpenAI-compatible embedder pointing at
  `bench.embedding_double` (429 with Retry-After, 500, timeouts, slow answers;
  hash-derived vectors the checker can recompute);
- a driver inserts, edits (content, title, one paragraph, or metadata only)
  and deletes documents at random, as their owner;
- every `--kill-every` seconds a random worker is SIGKILLed and restarted;
- the database is restarted `--restarts` times, evenly spaced (alternately a
  fast shutdown and an immediate one, i.e. crash recovery on start).

A few documents are embedded before the chaos starts and then only ever get
metadata edits: the double's per-text counts for their texts must not move.
After the chaos the queue drains (faults still on) and `bench.chaos_check`
verifies the database. Goal: 0 violations; the CLI exits non-zero on any.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import psutil
import psycopg
from psycopg.types.json import Jsonb

from bench._common import err_console, machine, make_documents
from bench.chaos_check import check, chunks_of
from bench.embedding_double import MODEL, DoubleState, Faults, serve
from cli._common import cli_command
from worker import schema
from worker.db import as_request, connect
from worker.devstack.postgres import LocalPostgres, free_port
from worker.errors import BenchError
from worker.models.openai import OpenAIEmbedder
from worker.users import User, add_user

Conn = psycopg.Connection[dict[str, Any]]

API_KEY = "sk-chaos-local"
#: The worker's settings for the run: small batches, short leases, frequent sweeps,
#: so killed workers' jobs come back within the run.
BATCH_SIZE, LEASE_SECONDS, SWEEP_SECONDS, MAX_ATTEMPTS = 8, 10, 1.0, 5
#: Documents embedded first and then only edited in their metadata.
FROZEN_DOCS = 8


@dataclass
class Tally:
    """What happened, for the report."""

    ops: Counter[str] = field(default_factory=Counter)
    op_errors: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    worker_exits: int = 0  # workers that stopped without being killed
    restarts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Workers:
    """The worker processes: started, SIGKILLed, restarted; exits we did not cause counted."""

    def __init__(self, n: int, db_url: str, base_url: str, logs: Path, tally: Tally) -> None:
        self.db_url, self.logs, self.tally = db_url, logs, tally
        self.env = dict(os.environ)
        self.env.update(SUPARAG_EMBEDDING_PROVIDER="openai", SUPARAG_EMBEDDING_MODEL=MODEL,
                        SUPARAG_OPENAI_API_KEY=API_KEY, SUPARAG_OPENAI_BASE_URL=base_url)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self._logs: list[IO[bytes]] = []
        self.lock = threading.Lock()

    def start(self, i: int) -> None:
        log = (self.logs / f"worker-{i}.log").open("ab")
        self._logs.append(log)
        self.procs[i] = subprocess.Popen(
            cli_command("worker", "--only", "embeddings", "--batch-size", str(BATCH_SIZE),
                        "--lease", str(LEASE_SECONDS), "--sweep", str(SWEEP_SECONDS),
                        "--max-attempts", str(MAX_ATTEMPTS), "--db-url", self.db_url),
            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self.start(i)

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a random worker (our own child, by pid) and start a new one in its place."""
        with self.lock:
            i = rng.randrange(len(self.procs))
            proc = self.procs[i]
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                self.tally.kills += 1
            self.start(i)

    def revive(self) -> None:
        """Restart workers that exited by themselves (counted: a worker should ride out
        a database restart)."""
        with self.lock:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    self.tally.worker_exits += 1
                    self.start(i)

    def stop(self) -> None:
        with self.lock:
            for proc in self.procs:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in self.procs:
                if proc is None:
                    continue
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for log in self._logs:
                log.close()


class Driver:
    """Random inserts, edits and deletes as the documents' owner, until stopped."""

    WEIGHTS: ClassVar[dict[str, int]] = {
        "insert": 30, "edit_content": 15, "edit_paragraph": 10, "edit_title": 5,
        "edit_metadata": 25, "delete": 10}

    def __init__(self, db_url: str, user: User, frozen: list[uuid.UUID], *, rate: float,
                 seed: int, tally: Tally) -> None:
        self.db_url, self.user, self.frozen, self.rate = db_url, user, frozen, rate
        self.rng = random.Random(seed)
        self.tally = tally
        self.live: dict[uuid.UUID, tuple[str, str]] = {}
        self.deleted: set[uuid.UUID] = set()
        self.stopping = threading.Event()
        self.conn: Conn | None = None
        self.serial = 0
        self.thread = threading.Thread(target=self._run, name="chaos-driver", daemon=True)

    def _text(self) -> tuple[str, str]:
        self.serial += 1
        doc = make_documents(1, seed=self.rng.randrange(1 << 30), paragraphs=(1, 8))[0]
        return f"{doc.title} #{self.serial}", doc.content

    def _run(self) -> None:
        kinds, weights = list(self.WEIGHTS), list(self.WEIGHTS.values())
        next_at = time.monotonic()
        while not self.stopping.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            if kind != "insert" and kind != "edit_metadata" and not self.live:
                kind = "insert"
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = connect(self.db_url)
                self._op(self.conn, kind)
                with self.tally.lock:
                    self.tally.ops[kind] += 1
            except psycopg.Error:
                # The database is restarting: count it, reconnect on the next op.
                with self.tally.lock:
                    self.tally.op_errors[kind] += 1
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.stopping.wait(0.2)
            next_at += 1 / self.rate
            self.stopping.wait(max(0.0, next_at - time.monotonic()))
        if self.conn is not None:
            self.conn.close()

    def _op(self, conn: Conn, kind: str) -> None:
        claims = self.user.claims()
        if kind == "insert":
            doc_id, (title, content) = uuid.uuid4(), self._text()
            with as_request(conn, claims):
                conn.execute("insert into public.documents (id, owner_id, team, visibility,"
                             " title, content) values (%s, %s, 'bench', 'team', %s, %s)",
                             (doc_id, self.user.id, title, content))
            self.live[doc_id] = (title, content)
            return
        if kind == "edit_metadata":
            pool = [*self.live, *self.frozen]
            doc_id = self.frozen[self.serial % len(self.frozen)] if self.rng.random() < 0.5 \
                else self.rng.choice(pool)
            self.serial += 1
            with as_request(conn, claims):
                conn.execute("update public.documents set metadata = %s where id = %s",
                             (Jsonb({"edit": self.serial, "tag": self.rng.choice("abc")}),
                              doc_id))
            return
        doc_id = self.rng.choice(list(self.live))
        if kind == "delete":
            self.deleted.add(doc_id)  # before: a delete cut off by a restart may have landed
            self.live.pop(doc_id)
            with as_request(conn, claims):
                conn.execute("delete from public.documents where id = %s", (doc_id,))
            return
        title, content = self.live[doc_id]
        if kind == "edit_title":
            title = self._text()[0]
        elif kind == "edit_content":
            content = self._text()[1]
        else:  # one paragraph changes: the others' chunks keep their vectors
            parts = content.split("\n\n")
            parts[self.rng.randrange(len(parts))] = self._text()[1].split("\n\n")[0]
            content = "\n\n".join(parts)
        with as_request(conn, claims):
            conn.execute("update public.documents set title = %s, content = %s where id = %s",
                         (title, content, doc_id))
        self.live[doc_id] = (title, content)


def _restart_database(server: LocalPostgres, *, immediate: bool, down_seconds: float) -> None:
    """Stop the server (fast, or immediate: no checkpoint, crash recovery on start), wait,
    start it again."""
    if immediate:
        status = server.status()
        if status is None:
            raise BenchError("the database is not running; cannot restart it")
        os.kill(status.pid, signal.SIGQUIT)
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(status.pid).wait(timeout=60)
    else:
        server.stop()
    time.sleep(down_seconds)
    server.start()


def _pending(conn: Conn) -> tuple[int, int]:
    """(documents pending, jobs queued or leased)."""
    row = conn.execute(
        "select (select count(*) from public.documents where embedding_status = 'pending') as d,"
        " (select count(*) from suparag_private.embedding_jobs where status = 'queued'"
        "  or leased_until is not null) as j").fetchone()
    assert row is not None
    return int(row["d"]), int(row["j"])


def _wait_drained(url: str, workers: Workers, timeout: float) -> float | None:
    """Seconds until nothing is pending or leased (None on timeout), reviving dead workers."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        workers.revive()
        try:
            with connect(url, autocommit=True) as conn:
                if _pending(conn) == (0, 0):
                    return time.monotonic() - started
        except psycopg.Error:
            pass
        time.sleep(0.5)
    return None


def run(*, seconds: float = 120.0, workers: int = 2, restarts: int = 2,
        kill_every: float = 4.0, rate: float = 10.0, seed: int = 14,
        faults: Faults | None = None, drain_timeout: float = 240.0,
        keep: Path | None = None) -> dict[str, Any]:
    """One chaos run and its check; the figures and violations as a dict."""
    if seconds <= 0 or workers < 1 or restarts < 0 or kill_every <= 0 or rate <= 0:
        raise BenchError("--seconds, --kill-every and --rate must be above 0, --workers at "
                         "least 1, --restarts at least 0")
    before = machine()
    rng = random.Random(seed)
    tally = Tally()
    state = DoubleState(faults or Faults(), seed=seed)
    home = Path(tempfile.mkdtemp(prefix="suparag-chaos-"))
    (home / "logs").mkdir()
    server = LocalPostgres(home, port=free_port())
    err_console.print("starting a temporary embedded PostgreSQL…")
    try:
        url = server.start().url
        with connect(url, autocommit=True) as conn:
            schema.apply_standin(conn)
            schema.push(conn)
            user = add_user(conn, "chaos@bench.local", team="bench")
        with serve(state) as base_url:
            chunker = OpenAIEmbedder(MODEL, api_key=API_KEY, base_url=base_url)
            procs = Workers(workers, url, base_url, home / "logs", tally)
            procs.start_all()
            try:
                frozen_ids, frozen_texts = _embed_frozen(url, user, chunker, procs, seed)
                frozen_calls = {t: state.calls(t) for t in frozen_texts}
                driver = Driver(url, user, frozen_ids, rate=rate, seed=seed + 1, tally=tally)
                err_console.print(f"chaos for {seconds:g} s: {workers} workers, a kill every "
                                  f"{kill_every:g} s, {restarts} database restarts…")
                started = time.monotonic()
                driver.thread.start()
                restart_at = [seconds * (i + 1) / (restarts + 1) for i in range(restarts)]
                next_kill = kill_every
                while (elapsed := time.monotonic() - started) < seconds:
                    if restart_at and elapsed >= restart_at[0]:
                        restart_at.pop(0)
                        immediate = len(tally.restarts) % 2 == 1
                        _restart_database(server, immediate=immediate, down_seconds=1.0)
                        tally.restarts.append("immediate" if immediate else "fast")
                    if elapsed >= next_kill:
                        procs.kill_one(rng)
                        next_kill += kill_every
                    procs.revive()
                    time.sleep(0.1)
                driver.stopping.set()
                driver.thread.join(timeout=30)
                err_console.print("draining (faults still on)…")
                drained = _wait_drained(url, procs, drain_timeout)
            finally:
                procs.stop()
            with connect(url, autocommit=True) as conn:
                result = check(conn, chunker, model=chunker.name, max_attempts=MAX_ATTEMPTS,
                               deleted=driver.deleted, frozen=frozen_calls, calls=state.calls)
        double = state.snapshot()
    finally:
        server.stop()
        if keep is None:
            shutil.rmtree(home, ignore_errors=True)
        else:
            shutil.copytree(home / "logs", keep, dirs_exist_ok=True)
            shutil.rmtree(home, ignore_errors=True)
    violations = list(result.violations)
    if drained is None:
        violations.insert(0, f"the queue did not drain within {drain_timeout:.0f} s")
    return {
        "bench": "chaos",
        "seconds": seconds,
        "workers": workers,
        "kill_every_s": kill_every,
        "ops_per_s": rate,
        "model": chunker.name,
        "vectors": "hash-derived (sha256(text) seeds a unit normal vector), recomputed by the "
                   "checker",
        "operations": dict(tally.ops),
        "operations_refused": dict(tally.op_errors),
        "kills": tally.kills,
        "worker_exits": tally.worker_exits,
        "restarts": tally.restarts,
        "double": double,
        "drain_s": drained,
        "check": result.as_dict(),
        "violations": violations,
        "pass": not violations,
        "machine_before": before,
        "machine_after": machine(),
    }


def _embed_frozen(url: str, user: User, chunker: OpenAIEmbedder, procs: Workers,
                  seed: int) -> tuple[list[uuid.UUID], list[str]]:
    """Insert FROZEN_DOCS documents and wait until they are embedded; their ids and texts."""
    docs = make_documents(FROZEN_DOCS, seed=seed + 2, paragraphs=(1, 4))
    ids = [uuid.uuid4() for _ in docs]
    with connect(url) as conn:
        with as_request(conn, user.claims()):
            for doc_id, doc in zip(ids, docs, strict=True):
                conn.execute("insert into public.documents (id, owner_id, team, visibility,"
                             " title, content) values (%s, %s, 'bench', 'team', %s, %s)",
                             (doc_id, user.id, f"Frozen {doc.title}", doc.content))
        deadline = time.monotonic() + 120
        while True:
            procs.revive()
            row = conn.execute("select count(*) as n from public.documents where id = any(%s)"
                               " and embedding_status = 'ready'", (ids,)).fetchone()
            conn.commit()
            if row is not None and row["n"] == len(ids):
                break
            if time.monotonic() > deadline:
                raise BenchError("the workers did not embed the first documents within 120 s; "
                                 "see the worker logs")
            time.sleep(0.2)
    texts = [c.embed_text for d in docs for c in chunks_of(chunker, f"Frozen {d.title}",
                                                             d.content)]
    return ids, texts


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    ops = r["operations"]
    print(f"\nchaos for {r['seconds']:g} s: {r['workers']} `suparag worker` processes, model "
          f"{r['model']} on an OpenAI-compatible double ({r['vectors']})")
    print(f"operations: {sum(ops.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}); refused during "
          f"restarts: {sum(r['operations_refused'].values())}")
    print(f"workers SIGKILLed: {r['kills']}; exited by themselves (restarted): "
          f"{r['worker_exits']}; database restarts: {len(r['restarts'])} "
          f"({', '.join(r['restarts']) or 'none'})")
    d = r["double"]
    print(f"embedding requests: {d['requests']}, faults injected: "
          f"{', '.join(f'{k} {v}' for k, v in sorted(d['faults'].items())) or 'none'}")
    c = r["check"]
    drain = "did not drain" if r["drain_s"] is None else f"drained in {r['drain_s']:.1f} s"
    print(f"{drain}; checked {c['live']} live documents ({c['ready']} ready, {c['failed']} "
          f"failed after the cap), {c['chunks_checked']} chunks and vectors, "
          f"{c['deleted_checked']} deletes, {c['frozen_texts_checked']} metadata-only texts")
    for error in c["failed_errors"]:
        print(f"  failed: {error}")
    print(f"violations: {len(r['violations'])}")
    for v in r["violations"][:50]:
        print(f"  {v}")
    print(f"load average before {r['machine_before']['load']}, after "
          f"{r['machine_after']['load']} on {r['machine_after']['cpus']} cores")
