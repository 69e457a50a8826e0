"""How fast the CLI answers (issue 16): `suparag --help`, and `suparag search` with the
local stack running.

    suparag bench cli [--runs 10] [--docs 1000] [--db-url URL] [--json]

Starts the local stack as `suparag dev --no-workers` does (the embedded
PostgreSQL and the API, in a temporary home on free ports), or with --db-url
only the API, on that database. Loads `--docs` team documents of one user,
random unit vectors stored under the configured model's name (the model the
API serves), and runs the real CLI in a new process each time, as a user
does: `suparag --help`, then `suparag search QUERY --as USER` (a table on
stdout). Before the clock starts the API loads its model (one embed request)
and one search runs under `python -X importtime`: the report says whether it
imported torch (it must not: the API embeds the query).

Reported for each command: p50/p95/max wall and the p50's and p95's ratio to
the goal (search 1 s, --help 0.5 s; a ratio <= 1 meets it), and the CPU
seconds (user + system) of the process, which a busy machine inflates less
than the wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._common import bench_database, emit, err_console, machine, print_load, summary
from cli._common import cli_command
from worker.db import connect
from worker.devstack import stack
from worker.devstack.postgres import free_port
from worker.errors import BenchError
from worker.models.factory import embedder_from_settings
from worker.settings import Settings, get_settings
from worker.users import User, add_user

GOAL_SEARCH_S, GOAL_HELP_S = 1.0, 0.5
QUERY = "how do I restore last night's backup?"
TEAM = "cli-bench"
#: The CLI's own settings that would point it elsewhere than the bench's stack.
_LOCATION_VARS = ("SUPARAG_DB_URL", "SUPARAG_HOME", "SUPARAG_DB_PORT", "SUPARAG_API_PORT")
#: Modules whose import means the CLI loaded the model itself.
MODEL_MODULES = ("torch", "sentence_transformers")


@dataclass(frozen=True)
class RunningStack:
    """The bench's stack: its database, its API, and the environment under which the CLI
    finds them."""

    settings: Settings
    db_url: str
    api_url: str
    anon_key: str
    env: dict[str, str]

    def warm_up(self) -> None:
        """Have the API load its model (the first embed request does), however long it takes."""
        err_console.print("the API loads its model…")
        response = httpx.post(f"{self.api_url}/functions/v1/embed", json={"input": ["warm"]},
                              headers={"Authorization": f"Bearer {self.anon_key}",
                                       "apikey": self.anon_key}, timeout=600)
        if response.status_code != 200:
            raise BenchError(f"the API's embed function answered {response.status_code}: "
                             f"{response.text[:500]}")


@contextmanager
def running_stack(db_url: str | None = None) -> Iterator[RunningStack]:
    """The local stack in a temporary home (server and API, as `suparag dev --no-workers`),
    or with db_url only the API, on that database (migrated if needed); stopped after."""
    home = Path(tempfile.mkdtemp(prefix="suparag-bench-cli-"))
    settings = Settings(home=home, db_port=free_port(), api_port=free_port())
    env = {k: v for k, v in os.environ.items() if k not in _LOCATION_VARS}
    env.update(SUPARAG_HOME=str(home), SUPARAG_DB_PORT=str(settings.db_port),
               SUPARAG_API_PORT=str(settings.api_port), COLUMNS="120")
    try:
        if db_url is None:
            err_console.print("starting the local stack (PostgreSQL and the API)…")
            url = stack.start(settings, api=True).server.url
        else:
            with bench_database(db_url):
                pass  # migrated
            err_console.print("starting the local API…")
            stack.local_api(settings).start(db_url)
            url = env["SUPARAG_DB_URL"] = db_url
        api = stack.local_api(settings).status()
        if api is None:
            raise BenchError(f"the local API is not running; see {home / 'logs'}")
        yield RunningStack(settings=settings, db_url=url, api_url=api.url,
                           anon_key=stack.project_keys(settings).anon_key, env=env)
    finally:
        stack.stop(settings)
        shutil.rmtree(home, ignore_errors=True)


def load_corpus(db_url: str, docs: int, *, seed: int = 16) -> User:
    """A user owning docs team documents, each one chunk with a random unit vector under
    the configured model's name, marked embedded; returns the user."""
    model = embedder_from_settings(get_settings()).name
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((docs, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with connect(db_url, autocommit=True) as conn:
        user = add_user(conn, f"cli-{uuid.uuid4().hex[:8]}@bench.local", team=TEAM)
        with conn.transaction():
            ids = conn.execute(
                "insert into public.documents (owner_id, team, visibility, title, content)"
                " select %s, %s, 'team', 'Runbook ' || i, 'Backups of cluster ' || i"
                " from generate_series(0, %s - 1) i returning id", (user.id, TEAM, docs)
            ).fetchall()
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into public.document_chunks (document_id, chunk_index, content,"
                    " embedding, embedding_model, content_hash) values (%s, 0, %s, %s, %s,"
                    " md5(%s::text))",
                    [(row["id"], f"Backups of cluster {i}", vectors[i], model, i)
                     for i, row in enumerate(ids)])
            conn.execute("update public.documents set embedding_status = 'ready'"
                         " where owner_id = %s", (user.id,))
            conn.execute("delete from suparag_private.embedding_jobs where document_id in"
                         " (select id from public.documents where owner_id = %s)", (user.id,))
        conn.execute("analyze public.document_chunks")
    return user


def remove_corpus(db_url: str, user: User) -> None:
    """The user and their documents (and so their chunks)."""
    with connect(db_url, autocommit=True) as conn:
        conn.execute("delete from public.documents where owner_id = %s", (user.id,))
        conn.execute("delete from auth.users where id = %s", (user.id,))


def run_cli(args: list[str], env: dict[str, str], *, python_flags: tuple[str, ...] = (),
            timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """`suparag *args` in a new process: its result, wall seconds and CPU seconds."""
    command = cli_command(*args)
    command[1:1] = python_flags
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, text=True, capture_output=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise BenchError(f"`suparag {' '.join(args)}` exited with code {result.returncode}:\n"
                         f"{result.stderr.strip()[-2000:]}")
    return result, wall, cpu


def imported_modules(importtime_log: str) -> set[str]:
    """The modules a `python -X importtime` run imported, from its stderr."""
    names = set()
    for line in importtime_log.splitlines():
        # "import time: <self us> | <cumulative us> | <indent><module>", after one header line
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3:
            names.add(parts[2].strip())
    names.discard("imported package")  # the header's third column
    return names


def model_modules(importtime_log: str) -> list[str]:
    """The model libraries' modules (MODEL_MODULES) in a `python -X importtime` log."""
    return sorted(m for m in imported_modules(importtime_log) if m.split(".")[0] in MODEL_MODULES)


def _figures(walls: list[float], cpus: list[float], goal: float) -> dict[str, Any]:
    wall = {k: round(v, 3) for k, v in summary(walls).items()}  # the ratios from these
    return {"wall_s": wall,
            "cpu_s": {k: round(v, 3) for k, v in summary(cpus).items()},
            "goal_s": goal, "ratio_p50": round(wall["p50"] / goal, 3),
            "ratio_p95": round(wall["p95"] / goal, 3)}


def run(*, runs: int = 10, docs: int = 1000, db_url: str | None = None) -> dict[str, Any]:
    if runs < 1 or docs < 1:
        raise BenchError("--runs and --docs must be at least 1")
    before = machine()
    with running_stack(db_url) as running:
        user = load_corpus(running.db_url, docs)
        try:
            running.warm_up()
            search = ["search", QUERY, "--as", user.email]
            err_console.print("a search under `python -X importtime` (not timed)…")
            first, _, _ = run_cli(search, running.env, python_flags=("-X", "importtime"))
            loaded = model_modules(first.stderr)
            times: dict[str, tuple[list[float], list[float]]] = {"help": ([], []),
                                                                  "search": ([], [])}
            for i in range(runs):
                err_console.print(f"run {i + 1}/{runs}: --help, search")
                for name, args in (("help", ["--help"]), ("search", search)):
                    _, wall, cpu = run_cli(args, running.env)
                    times[name][0].append(wall)
                    times[name][1].append(cpu)
        finally:
            remove_corpus(running.db_url, user)
    return {
        "bench": "cli", "runs": runs, "documents": docs, "query": QUERY,
        "stack": "given database + local API" if db_url else "local stack (server + API)",
        "help": _figures(*times["help"], GOAL_HELP_S),
        "search": _figures(*times["search"], GOAL_SEARCH_S),
        "search_imported_model_modules": loaded,
        "machine_before": before, "machine_after": machine(),
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"cli: {r['runs']} runs each, a new process every time; {r['stack']}, "
          f"{r['documents']} documents")
    for name, label in (("help", "suparag --help"), ("search", "suparag search --as USER")):
        f = r[name]
        w, c = f["wall_s"], f["cpu_s"]
        print(f"  {label:<26} wall p50 {w['p50']:.3f} s, p95 {w['p95']:.3f} s, max "
              f"{w['max']:.3f} s; goal {f['goal_s']:g} s: p50 x{f['ratio_p50']:.2f}, "
              f"p95 x{f['ratio_p95']:.2f}; CPU p50 {c['p50']:.3f} s")
    loaded = r["search_imported_model_modules"]
    print("  search imported " + (", ".join(loaded[:5]) + (" …" if len(loaded) > 5 else "")
                                  if loaded else "no model library (torch, "
                                  "sentence_transformers): the API embedded the query"))
    print_load(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--db-url")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(run(runs=args.runs, docs=args.docs, db_url=args.db_url), args.json, print_report)


if __name__ == "__main__":
    main()
