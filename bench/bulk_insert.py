"""A bulk import through the API, cut off and run again (issue 17, "Ingest at scale").

    suparag bench bulk-insert [--rows 100000] [--batch 2000] [--workers 2]
                              [--interrupt 0.4] [--json]

On a temporary embedded PostgreSQL, with the local API (`python -m
worker.devstack.api`, what `suparag dev` serves) and --workers real `suparag
worker` processes embedding through the OpenAI-compatible double (fixed
vectors, so the model costs nothing and the queue and the database are what is
measured):

1. An app's import script, on supabase-py: it signs in over /auth/v1 as the
   importing user and sends --rows documents to /rest/v1/documents in batches
   of --batch rows. Each row carries an id derived from its source key
   (uuid5), and each batch is posted with `upsert(..., ignore_duplicates=True)`
   (`Prefer: resolution=ignore-duplicates`: ON CONFLICT (id) DO NOTHING), so
   a re-run inserts only the rows that are missing. (A plain `upsert()` merges,
   which asks for UPDATE on every posted column, the id included: the
   documents' grants do not give users that, so PostgREST and this API answer
   42501. Ignoring duplicates needs INSERT only.)
2. The script is cut off after --interrupt of its batches, then run again
   from the first batch: the second run must insert exactly the rows the first
   did not (each batch's `count=exact`), and the queue must hold one job per
   document.
3. Meanwhile a LISTEN connection counts the wake-ups on the workers' channel
   (goal: one per committed batch, not one per row), and a second user
   searches through `/rest/v1/rpc/match_documents` in a closed loop over
   2,000 documents of their own: p50/p95 before the import, while it runs, and
   while the workers embed (goal: p95 during within 2x of before; no failed
   search). Every 50 ms, pg_stat_activity says what each running search waits
   on: a heavyweight lock (`Lock:*`) would be the import stalling searches;
   `running` is a search on a CPU or waiting for one.
4. Rows/s through the API; then the time until every document is `ready`:
   documents/s embedded. A bench-only trigger counts write-backs: every
   document must be written back exactly once.

With --via ingest the same rows are files instead (one Markdown file each),
imported by `suparag ingest FOLDER --owner ...` in a process of its own, which
upserts them 50 to a transaction. The first run is killed (SIGKILL, as a crash
would) once --interrupt of the rows are committed; the second is the same
command again, which must report the committed files `unchanged` and create
only the rest. Everything else (searches, wake-ups, write-backs) is as above.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._common import bench_database, err_console, machine, make_documents, pct, progress
from bench.embedding_double import DoubleState, Faults, serve
from bench.queue import WRITE_COUNTER, Workers
from cli._common import cli_command
from worker.db import connect
from worker.devstack.api.auth import hash_password
from worker.devstack.api.keys import load_or_create
from worker.devstack.postgres import free_port
from worker.devstack.processes import LocalApi
from worker.errors import BenchError
from worker.ingest.write import BATCH_SIZE as INGEST_BATCH
from worker.users import User, add_user

PASSWORD = "bench password 1"
#: The searching user's own documents (random vectors, ready as if embedded).
SEARCH_CORPUS = 2000
#: Seconds of searching before the import starts.
BEFORE_SECONDS = 5.0
#: Goal: search p95 while the import runs within this many times the quiet figure.
GOAL_P95_RATIO = 2.0
_NAMESPACE = uuid.UUID("5b1f4e0e-6c1a-4d0b-9f0e-2f1a2b3c4d5e")


class Searcher(threading.Thread):
    """A user searching through the API in a closed loop, latencies by phase."""

    def __init__(self, api: str, anon: str, token: str) -> None:
        super().__init__(name="bulk-insert-searcher", daemon=True)
        vector = np.random.default_rng(7).standard_normal(384)
        self.body = {"query_embedding": (vector / np.linalg.norm(vector)).tolist(),
                     "match_count": 10}
        self.http = httpx.Client(base_url=api, timeout=30,
                                 headers={"apikey": anon, "authorization": f"Bearer {token}"})
        self.phase = "warm-up"  # not reported: the API's and the database's first calls
        self.ms: dict[str, list[float]] = {"warm-up": [], "before": [], "import": [],
                                           "embedding": []}
        self.failed = dict.fromkeys(self.ms, 0)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            phase, started = self.phase, time.perf_counter()
            try:
                reply = self.http.post("/rest/v1/rpc/match_documents", json=self.body)
                ok = reply.status_code == 200 and len(reply.json()) == 10
            except httpx.HTTPError:
                ok = False
            if ok:
                self.ms[phase].append((time.perf_counter() - started) * 1000)
            else:
                self.failed[phase] += 1
            time.sleep(0.02)

    def report(self) -> dict[str, Any]:
        return {phase: {"n": len(v), "failed": self.failed[phase],
                        "p50_ms": pct(v, 50) if v else None,
                        "p95_ms": pct(v, 95) if v else None}
                for phase, v in self.ms.items() if phase != "warm-up"}


class SearchWaits(threading.Thread):
    """Every 50 ms: what the backends running a search wait on, if anything ("running":
    on a CPU, or waiting for one; "Lock:...": a heavyweight lock, the stall to rule out)."""

    def __init__(self, db_url: str) -> None:
        super().__init__(name="bulk-insert-search-waits", daemon=True)
        self.db_url = db_url
        self.events: Counter[str] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        with connect(self.db_url, autocommit=True) as conn:
            while not self.stopping.is_set():
                for row in conn.execute(
                        "select coalesce(wait_event_type || ':' || wait_event, 'running') as ev"
                        " from pg_stat_activity where state = 'active'"
                        " and query like '%%match_documents%%' and pid <> pg_backend_pid()"):
                    self.events[str(row["ev"])] += 1
                self.stopping.wait(0.05)

    @property
    def lock_waits(self) -> int:
        return sum(n for ev, n in self.events.items() if ev.startswith("Lock:"))


class Wakeups(threading.Thread):
    """Counts the notifications on the workers' channel."""

    def __init__(self, db_url: str) -> None:
        super().__init__(name="bulk-insert-wakeups", daemon=True)
        self.conn = connect(db_url, autocommit=True)
        self.conn.execute("listen suparag_embedding_jobs")
        self.count = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for _ in self.conn.notifies(timeout=0.2):
                self.count += 1
        self.conn.close()


def _rows(n: int, tag: str, seed: int) -> list[dict[str, Any]]:
    """The import: n documents of 1-3 paragraphs, each with an id from its source key."""
    return [{"id": str(uuid.uuid5(_NAMESPACE, f"{tag}/{i}")), "title": doc.title,
             "content": doc.content, "visibility": "private", "team": "bench",
             "metadata": {"source_key": f"{tag}/{i}"}}
            for i, doc in enumerate(make_documents(n, seed=seed, paragraphs=(1, 3)))]


def _import(client: Any, rows: list[dict[str, Any]], batch: int, *, stop_after: int | None,
            label: str) -> tuple[int, int, float]:
    """Post rows in batches as the app's script would; (batches sent, rows inserted, s)."""
    batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    if stop_after is not None:
        batches = batches[:stop_after]
    inserted, started = 0, time.perf_counter()
    with progress() as bar:
        task = bar.add_task(label, total=len(batches) * batch)
        for chunk in batches:
            reply = client.table("documents").upsert(
                chunk, ignore_duplicates=True, returning="minimal", count="exact").execute()
            inserted += int(reply.count or 0)
            bar.advance(task, len(chunk))
    return len(batches), inserted, time.perf_counter() - started


def _write_files(rows: list[dict[str, Any]], folder: Path) -> None:
    """The rows as the files a team would ingest: one Markdown file each."""
    folder.mkdir()
    for i, row in enumerate(rows):
        (folder / f"{i:06d}.md").write_text(f"# {row['title']}\n\n{row['content']}\n")


def _ingest(url: str, folder: Path, importer: User, *, stop_rows: int | None,
            label: str) -> tuple[int, int, float, dict[str, Any] | None]:
    """`suparag ingest` of folder as importer, in a process of its own; killed (SIGKILL)
    once stop_rows documents are committed, if given. (batches committed, documents
    created, seconds, the command's JSON report unless killed)."""
    files = sum(1 for _ in folder.iterdir())
    with (tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err,
          connect(url, autocommit=True) as conn):
        started = time.perf_counter()
        proc = subprocess.Popen(
            cli_command("ingest", str(folder), "--owner", importer.email, "--team", "bench",
                        "--visibility", "private", "--db-url", url, "--json"),
            stdin=subprocess.DEVNULL, stdout=out, stderr=err)

        def committed() -> int:
            row = conn.execute("select count(*) as n from public.documents where owner_id = %s",
                               (importer.id,)).fetchone()
            return int(row["n"]) if row else 0

        with progress() as bar:
            task = bar.add_task(label, total=stop_rows or files)
            while proc.poll() is None:
                done = committed()
                bar.update(task, completed=done)
                if stop_rows is not None and done >= stop_rows:
                    proc.kill()
                    break
                time.sleep(0.05)
        proc.wait()
        seconds = time.perf_counter() - started
        if stop_rows is not None:
            done = committed()
            return -(-done // INGEST_BATCH), done, seconds, None
        if proc.returncode != 0:
            err.seek(0)
            said = err.read().decode(errors="replace").strip()[-2000:]
            raise BenchError(f"suparag ingest exited with code {proc.returncode}: "
                             f"{said or '(nothing on stderr)'}")
        out.seek(0)
        report = json.loads(out.read())
    return -(-int(report["files"]) // INGEST_BATCH), int(report["created"]), seconds, report


def _load_searcher(url: str, seed: int) -> tuple[User, User]:
    """The importing user (with a password, to sign in) and the searching one, whose
    corpus is ready with random vectors."""
    rng = np.random.default_rng(seed)
    with connect(url, autocommit=True) as conn:
        importer = add_user(conn, "importer@bench.local", team="bench")
        conn.execute("update auth.users set encrypted_password = %s where id = %s",
                     (hash_password(PASSWORD), importer.id))
        searcher = add_user(conn, "searcher@bench.local", team="elsewhere")
        vectors = rng.standard_normal((SEARCH_CORPUS, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with conn.transaction():
            ids = [row["id"] for row in conn.execute(
                "insert into public.documents (owner_id, team, visibility, title, content)"
                " select %s, 'elsewhere', 'private', 'Searched ' || i, 'Text ' || i || '.'"
                " from generate_series(0, %s - 1) i order by i returning id",
                (searcher.id, SEARCH_CORPUS))]
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into public.document_chunks (document_id, chunk_index, content,"
                    " embedding, embedding_model, content_hash)"
                    " values (%s, 0, %s, %s, 'all-MiniLM-L6-v2', md5(%s))",
                    [(doc, f"Text {i}.", vectors[i], str(i)) for i, doc in enumerate(ids)])
            conn.execute("update public.documents set embedding_status = 'ready'")
            conn.execute("delete from suparag_private.embedding_jobs")
        conn.execute(WRITE_COUNTER)
        conn.execute("vacuum analyze public.documents, public.document_chunks")
    return importer, searcher


def run(*, rows: int = 100_000, batch: int = 2000, workers: int = 2, interrupt: float = 0.4,
        seed: int = 23, via: str = "api") -> dict[str, Any]:
    """The import, cut off and run again, beside searches and the workers; the figures."""
    if rows < 1 or batch < 1 or workers < 1 or not 0 < interrupt < 1:
        raise BenchError("--rows, --batch and --workers must be at least 1; --interrupt "
                         "between 0 and 1")
    if via not in ("api", "ingest"):
        raise BenchError("--via is api or ingest")
    from supabase import create_client

    before = machine()
    home = Path(tempfile.mkdtemp(prefix="suparag-bench-bulk-"))
    tag = uuid.uuid4().hex[:8]
    import_rows = _rows(rows, tag, seed)
    batches = -(-rows // batch)
    stop_after = max(1, int(batches * interrupt))
    state = DoubleState(faults=Faults(), enabled=False, fixed=True)
    try:
        with bench_database(None) as url, serve(state) as base_url:
            importer, searcher_user = _load_searcher(url, seed)
            api = LocalApi(home, port=free_port())
            err_console.print("starting the local API…")
            status, _ = api.start(url)
            (home / "worker-logs").mkdir()
            pool = Workers(workers, url, base_url, home / "worker-logs", batch_size=16)
            searcher: Searcher | None = None
            wakeups, waits = Wakeups(url), SearchWaits(url)
            try:
                keys = load_or_create(home)
                pool.wait_ready()
                client = create_client(status.url, keys.anon_key)
                client.auth.sign_in_with_password({"email": importer.email,
                                                   "password": PASSWORD})
                searcher = Searcher(status.url, keys.anon_key,
                                    keys.access_token(searcher_user))
                searcher.start()
                wakeups.start()
                time.sleep(1.0)
                searcher.phase = "before"
                time.sleep(BEFORE_SECONDS)
                searcher.phase = "import"
                waits.start()
                unchanged: list[str] = []
                if via == "api":
                    first = _import(client, import_rows, batch, stop_after=stop_after,
                                    label="import, cut off")
                    second = _import(client, import_rows, batch, stop_after=None,
                                     label="import, run again")
                else:
                    folder = home / "files"
                    _write_files(import_rows, folder)
                    b1, n1, s1, _ = _ingest(url, folder, importer, label="ingest, killed",
                                            stop_rows=max(1, int(rows * interrupt)))
                    b2, n2, s2, report = _ingest(url, folder, importer, stop_rows=None,
                                                 label="ingest, run again")
                    first, second = (b1, n1, s1), (b2, n2, s2)
                    if report is None or report["unchanged"] != first[1]:
                        unchanged.append(f"the re-run found {report and report['unchanged']} "
                                         f"files unchanged; the killed run committed {first[1]}")
                searcher.phase = "embedding"
                embed_started = time.perf_counter()
                with connect(url, autocommit=True) as conn:
                    ready = _wait_ready(conn, importer, rows, pool)
                embed_seconds = time.perf_counter() - embed_started
                searcher.stopping.set()
                searcher.join()
                wakeups.stopping.set()
                wakeups.join()
                waits.stopping.set()
                waits.join()
                with connect(url, autocommit=True) as conn:
                    violations = unchanged + _check(conn, importer, rows, first, second)
            finally:
                if searcher is not None:
                    searcher.stopping.set()
                wakeups.stopping.set()
                waits.stopping.set()
                pool.stop()
                api.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    import_seconds = first[2] + second[2]
    searches = searcher.report()
    ratio = (searches["import"]["p95_ms"] / searches["before"]["p95_ms"]
             if searches["import"]["p95_ms"] and searches["before"]["p95_ms"] else None)
    posted = first[0] + second[0]
    return {
        "bench": "bulk-insert",
        "via": via,
        "rows": rows,
        "batch": batch if via == "api" else INGEST_BATCH,
        "workers": workers,
        "embedder": "bench.embedding_double (fixed vectors) over HTTP",
        "first_run": {"batches": first[0], "inserted": first[1], "seconds": first[2]},
        "second_run": {"batches": second[0], "inserted": second[1], "seconds": second[2]},
        "import_rows_per_s": (first[1] + second[1]) / import_seconds,
        "second_run_rows_per_s": rows / second[2],
        "wakeups": wakeups.count,
        "batches_posted": posted,
        "documents_ready": ready,
        "embed_seconds_after_import": embed_seconds,
        "searches": searches,
        "search_p95_import_over_before": ratio,
        "goal_p95_ratio": GOAL_P95_RATIO,
        # Sampled while the import and the embedding ran: what searches waited on.
        "search_wait_samples": dict(waits.events.most_common()),
        "search_lock_wait_samples": waits.lock_waits,
        "violations": violations + ([f"{wakeups.count} wake-ups for {posted} batches"]
                                    if wakeups.count > posted else []),
        "pass": not violations and ratio is not None and ratio <= GOAL_P95_RATIO
        and waits.lock_waits == 0 and not any(p["failed"] for p in searches.values()),
        "machine_before": before,
        "machine_after": machine(),
    }


def _wait_ready(conn: Any, importer: User, rows: int, pool: Workers) -> int:
    deadline = time.monotonic() + max(300.0, rows / 5)
    with progress() as bar:
        task = bar.add_task("embedding", total=rows)
        while True:
            row = conn.execute(
                "select count(*) filter (where embedding_status = 'ready') as ready,"
                " count(*) filter (where embedding_status = 'failed') as failed"
                " from public.documents where owner_id = %s", (importer.id,)).fetchone()
            bar.update(task, completed=int(row["ready"]))
            if int(row["ready"]) + int(row["failed"]) >= rows:
                return int(row["ready"])
            pool.check()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out with {row['ready']} of {rows} documents ready")
            time.sleep(0.5)


def _check(conn: Any, importer: User, rows: int, first: tuple[int, int, float],
           second: tuple[int, int, float]) -> list[str]:
    """Every row once, the second run inserted only the missing ones, one write-back each."""
    violations = []
    if first[1] + second[1] != rows:
        violations.append(f"the two runs inserted {first[1]} + {second[1]} rows, not {rows}")
    got = conn.execute(
        "select count(*) as docs, count(*) filter (where embedding_status = 'ready') as ready"
        " from public.documents where owner_id = %s", (importer.id,)).fetchone()
    if got["docs"] != rows or got["ready"] != rows:
        violations.append(f"{got['docs']} documents, {got['ready']} ready, for {rows} rows")
    writes = conn.execute(
        "select count(*) filter (where n <> 1) as bad, count(*) as docs from ("
        " select d.id, count(w.document_id) as n from public.documents d"
        " left join bench_queue.writes w on w.document_id = d.id"
        " where d.owner_id = %s group by d.id) per", (importer.id,)).fetchone()
    if writes["bad"]:
        violations.append(f"{writes['bad']} of {writes['docs']} documents were not written "
                          "back exactly once")
    left = conn.execute("select count(*) as n from suparag_private.embedding_jobs").fetchone()
    if left["n"]:
        violations.append(f"{left['n']} jobs left in the queue")
    return violations


def print_report(r: dict[str, Any]) -> None:
    how = "through /rest/v1" if r["via"] == "api" else "by `suparag ingest` of one file each"
    err_console.print(
        f"bulk insert {how}: {r['rows']:,} rows in batches of {r['batch']:,}, "
        f"{r['workers']} workers on the embedding double")
    for key in ("first_run", "second_run"):
        run_ = r[key]
        err_console.print(f"  {key.replace('_', ' ')}: {run_['batches']} batches, "
                          f"{run_['inserted']:,} rows inserted in {run_['seconds']:.1f} s")
    err_console.print(f"  imported: {r['import_rows_per_s']:,.0f} rows/s; the re-run "
                      f"(every row sent again) {r['second_run_rows_per_s']:,.0f} rows/s")
    err_console.print(f"  wake-ups: {r['wakeups']} for {r['batches_posted']} batches sent")
    err_console.print(f"  embedded after the import: {r['documents_ready']:,} documents in "
                      f"{r['embed_seconds_after_import']:.1f} s")
    for phase, s in r["searches"].items():
        if s["n"]:
            err_console.print(f"  search {phase}: n={s['n']} p50 {s['p50_ms']:.1f} ms, "
                              f"p95 {s['p95_ms']:.1f} ms, failed {s['failed']}")
    if r["search_p95_import_over_before"] is not None:
        err_console.print(f"  search p95 during the import / before: "
                          f"{r['search_p95_import_over_before']:.2f} (goal <= "
                          f"{r['goal_p95_ratio']:g})")
    samples = r["search_wait_samples"]
    err_console.print(f"  searches sampled {sum(samples.values())} times during the import and "
                      f"the embedding: {samples}; waiting on a lock: "
                      f"{r['search_lock_wait_samples']}")
    for violation in r["violations"]:
        err_console.print(f"  [red]violation:[/red] {violation}")


def main() -> None:
    print(json.dumps(run(rows=2000, batch=500), indent=2, default=str))


if __name__ == "__main__":
    main()
