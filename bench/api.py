"""Load on the local API (issue 14, "Load held"): many signed-in clients, then slow requests too.

    suparag bench api [--clients 50] [--seconds 60] [--slow 8] [--json]

Starts a temporary embedded PostgreSQL and the local API (`python -m
worker.devstack.api`, what `suparag dev` runs), loads a corpus of documents
with random 384-dim vectors (no model runs: match_documents gets a
precomputed query vector), then runs `--clients` clients over real HTTP
(httpx, asyncio), each a different user of one team, each in a closed loop of
`rpc('match_documents')`, an insert, a select, and a Realtime subscription
(join on a websocket, `postgres_changes` on documents, until the reply).

Phase 1 (quiet) runs `--seconds`; phase 2 runs as long again with `--slow`
extra clients calling `bench_slow()` (a function the bench creates:
pg_sleep(5)) back to back. Reported per phase: throughput, p50/p95/p99 per
call type, errors by status (503s apart), and the fast calls' p95 in phase 2
against phase 1 (goal: within 2x).

Users: one signs in over /auth/v1 (the path is exercised); the others get
tokens signed with the project's JWT secret, as `suparag token` does, because
local auth allows 30 password sign-ins per 5 minutes per address, as
Supabase Auth does.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench._common import bench_database, err_console, machine, pct
from worker.db import connect
from worker.devstack.api.auth import hash_password
from worker.devstack.api.keys import ProjectKeys, load_or_create
from worker.devstack.postgres import free_port
from worker.devstack.processes import LocalApi
from worker.errors import BenchError
from worker.users import User, add_user

PASSWORD = "bench password 1"
SLOW_SECONDS = 5.0
CALLS = ("rpc", "insert", "select", "realtime")
#: The phase-2 goal: fast calls' p95 within this many times the quiet figure.
GOAL_RATIO = 2.0


def run(*, clients: int = 50, seconds: float = 60.0, slow: int = 8, docs: int = 500,
        seed: int = 21) -> dict[str, Any]:
    """Both phases against one fresh stack; the figures as a dict."""
    if clients < 1 or seconds <= 0 or slow < 0 or docs < 1:
        raise BenchError("--clients and --docs must be at least 1, --seconds above 0, "
                         "--slow 0 or more")
    before = machine()
    home = Path(tempfile.mkdtemp(prefix="suparag-bench-api-"))
    try:
        with bench_database(None) as url:
            users = _load(url, clients, docs, seed)
            api = LocalApi(home, port=free_port())
            err_console.print("starting the local API…")
            status, _ = api.start(url)
            try:
                keys = load_or_create(home)
                phases = asyncio.run(_phases(status.url, keys, users, clients, seconds, slow,
                                             seed))
            finally:
                api.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    quiet, loaded = phases
    ratio = {c: (loaded["calls"][c]["p95_ms"] / quiet["calls"][c]["p95_ms"]
                 if quiet["calls"][c]["n"] and loaded["calls"][c]["n"] else None)
             for c in CALLS}
    worst = max((r for r in ratio.values() if r is not None), default=None)
    return {
        "bench": "api",
        "clients": clients,
        "seconds": seconds,
        "slow": slow,
        "slow_call": f"rpc bench_slow(): pg_sleep({SLOW_SECONDS:g})",
        "documents": docs,
        "quiet": quiet,
        "with_slow": loaded,
        "p95_ratio": ratio,
        "goal_ratio": GOAL_RATIO,
        "pass": (worst is not None and worst <= GOAL_RATIO and quiet["5xx"] == 0),
        "machine_before": before,
        "machine_after": machine(),
    }


def _load(url: str, clients: int, docs: int, seed: int) -> list[User]:
    """Users, a corpus with random vectors (ready, as if embedded), and the slow function."""
    rng = np.random.default_rng(seed)
    with connect(url, autocommit=True) as conn:
        users = [add_user(conn, f"client-{i}@bench.local", team="bench")
                 for i in range(clients)]
        conn.execute("update auth.users set encrypted_password = %s where id = %s",
                     (hash_password(PASSWORD), users[0].id))
        vectors = rng.standard_normal((docs, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with conn.transaction():
            for i in range(docs):
                owner = users[i % clients]
                row = conn.execute(
                    "insert into public.documents (owner_id, team, visibility, title, content)"
                    " values (%s, 'bench', 'team', %s, %s) returning id",
                    (owner.id, f"Doc {i}", f"Text of document {i}.")).fetchone()
                assert row is not None
                conn.execute(
                    "insert into public.document_chunks (document_id, chunk_index, content,"
                    " embedding, embedding_model, content_hash)"
                    " values (%s, 0, %s, %s, 'bench', md5(%s))",
                    (row["id"], f"Text of document {i}.", vectors[i], str(i)))
            conn.execute("update public.documents set embedding_status = 'ready'")
            conn.execute("delete from suparag_private.embedding_jobs")
            # A deliberately slow call the API serves like any rpc.
            conn.execute(
                "create or replace function public.bench_slow() returns integer"
                " language sql set search_path = '' as"
                f" $$ select 1 from pg_catalog.pg_sleep({SLOW_SECONDS}) $$")
            conn.execute("grant execute on function public.bench_slow() to authenticated")
        conn.execute("notify pgrst, 'reload schema'")
    return users


class Stats:
    """Latencies per call type and failures by status."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {c: [] for c in CALLS}
        self.statuses: Counter[str] = Counter()
        self.retry_after_503 = 0

    async def timed(self, call: str, go: Callable[[], Awaitable[int]]) -> None:
        started = time.perf_counter()
        try:
            status = await go()
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            self.statuses[f"{call} {type(exc).__name__}"] += 1
            return
        if status >= 400:
            self.statuses[f"{call} {status}"] += 1
            return
        self.ms[call].append((time.perf_counter() - started) * 1000)

    def report(self, seconds: float) -> dict[str, Any]:
        calls = {c: {"n": len(v), "p50_ms": pct(v, 50) if v else None,
                     "p95_ms": pct(v, 95) if v else None, "p99_ms": pct(v, 99) if v else None}
                 for c, v in self.ms.items()}
        total = sum(len(v) for v in self.ms.values())
        five = sum(n for k, n in self.statuses.items() if k.split()[-1].startswith("5"))
        return {"calls": calls, "throughput_per_s": total / seconds,
                "errors": dict(self.statuses),
                "5xx": five - sum(n for k, n in self.statuses.items() if k.endswith(" 503")),
                "503": sum(n for k, n in self.statuses.items() if k.endswith(" 503")),
                "503_with_retry_after": self.retry_after_503}


async def _phases(api: str, keys: ProjectKeys, users: list[User], clients: int,
                  seconds: float, slow: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    limits = httpx.Limits(max_connections=clients + slow + 10)
    async with httpx.AsyncClient(base_url=api, limits=limits, timeout=30) as http:
        signed_in = await http.post("/auth/v1/token", params={"grant_type": "password"},
                                    headers={"apikey": keys.anon_key},
                                    json={"email": users[0].email, "password": PASSWORD})
        if signed_in.status_code != 200:
            raise BenchError(f"sign-in answered {signed_in.status_code}: {signed_in.text}")
        tokens = [signed_in.json()["access_token"]] + [keys.access_token(u) for u in users[1:]]
        results = []
        for phase_slow in (0, slow):
            err_console.print(f"{clients} clients for {seconds:g} s"
                              + (f" with {phase_slow} slow requests running…" if phase_slow
                                 else " (quiet)…"))
            stats = Stats()
            stop = asyncio.Event()
            tasks = [asyncio.create_task(_client(http, api, keys.anon_key, t, stats, stop,
                                                 random.Random(seed + i)))
                     for i, t in enumerate(tokens)]
            slow_tasks = [asyncio.create_task(_slow_client(http, keys.anon_key, tokens[i % len(
                tokens)], stats, stop)) for i in range(phase_slow)]
            await asyncio.sleep(seconds)
            stop.set()
            await asyncio.gather(*tasks, *slow_tasks)
            slow_done = len(stats.ms.pop("slow", []))
            report = stats.report(seconds)
            report["slow_calls"] = slow_done
            results.append(report)
    return results[0], results[1]


async def _client(http: httpx.AsyncClient, api: str, anon: str, token: str, stats: Stats,
                  stop: asyncio.Event, rng: random.Random) -> None:
    headers = {"apikey": anon, "authorization": f"Bearer {token}"}
    vector = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(384)
    query = json.dumps((vector / np.linalg.norm(vector)).tolist())

    async def call(method: str, path: str, *, extra: dict[str, str] | None = None,
                   **kw: Any) -> int:
        response = await http.request(method, path, headers={**headers, **(extra or {})}, **kw)
        if response.status_code == 503 and response.headers.get("retry-after"):
            stats.retry_after_503 += 1
        return response.status_code

    while not stop.is_set():
        kind = rng.choice(["rpc", "rpc", "insert", "select", "select", "realtime"])
        if kind == "rpc":
            await stats.timed("rpc", lambda: call(
                "POST", "/rest/v1/rpc/match_documents",
                json={"query_embedding": query, "match_count": 10}))
        elif kind == "insert":
            await stats.timed("insert", lambda: call(
                "POST", "/rest/v1/documents", extra={"prefer": "return=minimal"},
                json={"title": "load", "content": "a document from the load bench",
                      "team": "bench", "visibility": "team"}))
        elif kind == "select":
            await stats.timed("select", lambda: call(
                "GET", "/rest/v1/documents", params={"select": "id,title", "limit": "20",
                                                     "order": "created_at.desc"}))
        else:
            await stats.timed("realtime", lambda: _subscribe(api, anon, token))


async def _subscribe(api: str, anon: str, token: str) -> int:
    """Join a postgres_changes channel over a fresh websocket; 200 on an ok reply."""
    import websockets

    ws_url = api.replace("http://", "ws://") + \
        f"/realtime/v1/websocket?apikey={anon}&vsn=1.0.0"
    async with websockets.connect(ws_url, open_timeout=30) as ws:
        await ws.send(json.dumps({
            "topic": "realtime:bench", "event": "phx_join", "ref": "1", "join_ref": "1",
            "payload": {"config": {"postgres_changes": [
                {"event": "*", "schema": "public", "table": "documents"}]},
                "access_token": token}}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if frame.get("event") == "phx_reply" and frame.get("ref") == "1":
                ok = frame["payload"].get("status") == "ok"
                return 200 if ok else 400


async def _slow_client(http: httpx.AsyncClient, anon: str, token: str, stats: Stats,
                       stop: asyncio.Event) -> None:
    headers = {"apikey": anon, "authorization": f"Bearer {token}"}
    stats.ms.setdefault("slow", [])
    while not stop.is_set():
        try:
            response = await http.post("/rest/v1/rpc/bench_slow", headers=headers, json={})
        except httpx.HTTPError as exc:
            stats.statuses[f"slow {type(exc).__name__}"] += 1
            continue
        if response.status_code >= 400:
            stats.statuses[f"slow {response.status_code}"] += 1
            await asyncio.sleep(0.5)
        else:
            stats.ms["slow"].append(SLOW_SECONDS * 1000)


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    print(f"\n{r['clients']} clients over HTTP for {r['seconds']:g} s per phase; "
          f"{r['documents']} documents; slow call: {r['slow_call']}")
    for label, key in (("quiet", "quiet"), (f"with {r['slow']} slow", "with_slow")):
        phase = r[key]
        print(f"{label}: {phase['throughput_per_s']:.0f} calls/s; 5xx {phase['5xx']}, "
              f"503 {phase['503']} ({phase['503_with_retry_after']} with Retry-After); "
              f"errors {phase['errors'] or 'none'}")
        print(f"  {'call':<10}{'n':>7}{'p50':>9}{'p95':>9}{'p99':>9}")
        for call, s in phase["calls"].items():
            if s["n"]:
                print(f"  {call:<10}{s['n']:>7}{s['p50_ms']:>7.0f}ms{s['p95_ms']:>7.0f}ms"
                      f"{s['p99_ms']:>7.0f}ms")
    ratios = ", ".join(f"{c} {v:.2f}x" for c, v in r["p95_ratio"].items() if v is not None)
    print(f"p95 with slow requests / quiet: {ratios} (goal <= {r['goal_ratio']:g}x): "
          f"{'PASS' if r['pass'] else 'MISS'}")
    print(f"load average before {r['machine_before']['load']}, after "
          f"{r['machine_after']['load']} on {r['machine_after']['cpus']} cores")
