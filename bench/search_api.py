"""`POST /functions/v1/search` under concurrent signed-in clients (issue 18).

    suparag bench search-api [--clients 20] [--requests 20] [--docs 10000] [--json]

Starts a temporary embedded PostgreSQL (or uses --db-url), loads `--docs`
documents readable by every client (one team; random unit vectors stored under
the configured model's name, so the HNSW path of match_documents runs as it
would for a broad reader), starts the real `suparag serve` in its own process,
configured by the environment as in production, and runs `--clients` clients
(httpx, asyncio), each a different user with its own access token, each sending
`--requests` searches back to back.

Two phases: cold (every query text new, so each is embedded by the model) and
warm (the same texts again, served from the query-vector cache). Reported per
phase: p50/p95/max end to end as the client saw it, and the model's share of it
(from the `Server-Timing` header the function sends). Goals: p95 <= 50 ms cold,
<= 15 ms warm.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np

from bench._common import bench_database, err_console, machine, print_load, summary
from worker.db import connect
from worker.devstack.postgres import free_port
from worker.errors import BenchError
from worker.models.factory import embedder_from_settings
from worker.settings import get_settings
from worker.users import User, add_user

GOAL_COLD_P95_MS, GOAL_WARM_P95_MS = 50.0, 15.0
_ROOT = Path(__file__).resolve().parents[1]
#: The server's output, kept for a look when a run goes wrong.
_LOG = Path(tempfile.gettempdir()) / "suparag-bench-search-api.log"
_WORDS = ["refund", "invoice", "replica", "backup", "latency", "token", "policy", "region",
          "schema", "index", "queue", "worker", "alert", "migration", "budget", "cluster"]


def run(*, clients: int = 20, requests: int = 20, docs: int = 10_000, k: int = 5,
        db_url: str | None = None, seed: int = 18) -> dict[str, Any]:
    if clients < 1 or requests < 1 or docs < 1:
        raise BenchError("--clients, --requests and --docs must be at least 1")
    before = machine()
    model = embedder_from_settings(get_settings()).name
    with bench_database(db_url) as url:
        users = _load(url, clients, docs, model, seed)
        secret = secrets.token_urlsafe(32)
        anon = _sign({"role": "anon"}, secret)
        tokens = [_sign(u.claims(), secret) for u in users]
        port = free_port()
        server = _serve(url, secret, anon, port, requests * clients)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base, server, anon, tokens[0])
            queries = [[_query(c, i) for i in range(requests)] for c in range(clients)]
            cold = asyncio.run(_phase(base, anon, tokens, queries, k))
            warm = asyncio.run(_phase(base, anon, tokens, queries, k))
        finally:
            server.terminate()
            server.wait(timeout=30)
            _cleanup(url, users)
    return {
        "bench": "search-api", "clients": clients, "requests_per_client": requests,
        "documents": docs, "k": k, "model": model,
        "cold": cold, "warm": warm,
        "goal_p95_ms": {"cold": GOAL_COLD_P95_MS, "warm": GOAL_WARM_P95_MS},
        "pass": cold["p95_ms"] <= GOAL_COLD_P95_MS and warm["p95_ms"] <= GOAL_WARM_P95_MS,
        "machine_before": before, "machine_after": machine(),
    }


def _sign(claims: dict[str, Any], secret: str) -> str:
    now = int(time.time())
    return jwt.encode({**claims, "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


def _query(client: int, i: int) -> str:
    a, b = _WORDS[(client + i) % len(_WORDS)], _WORDS[(client * 7 + i * 3) % len(_WORDS)]
    return f"how do I handle the {a} of a {b} (case {client}-{i})?"


def _load(url: str, clients: int, docs: int, model: str, seed: int) -> list[User]:
    """Users of one team and docs team documents with random unit vectors under model."""
    rng = np.random.default_rng(seed)
    err_console.print(f"loading {docs} documents…")
    with connect(url, autocommit=True) as conn:
        users = [add_user(conn, f"search-{i}@bench.local", team="search-bench")
                 for i in range(clients)]
        vectors = rng.standard_normal((docs, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        with conn.transaction():
            ids = conn.execute(
                "insert into public.documents (owner_id, team, visibility, title, content)"
                " select %s, 'search-bench', 'team', 'Doc ' || i, 'Text of document ' || i"
                " from generate_series(0, %s - 1) i returning id", (users[0].id, docs)
            ).fetchall()
            with conn.cursor() as cur:
                cur.executemany(
                    "insert into public.document_chunks (document_id, chunk_index, content,"
                    " embedding, embedding_model, content_hash) values (%s, 0, 'chunk', %s,"
                    " %s, md5(%s::text))",
                    [(row["id"], vectors[i], model, i) for i, row in enumerate(ids)])
            conn.execute("update public.documents set embedding_status = 'ready'"
                         " where team = 'search-bench'")
            conn.execute("delete from suparag_private.embedding_jobs")
        conn.execute("analyze public.document_chunks")
    return users


def _serve(url: str, secret: str, anon: str, port: int, per_minute: int) -> subprocess.Popen[str]:
    """The real `suparag serve`, configured by its environment as in production."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")}
    env.update(SUPARAG_DB_URL=url, SUPABASE_JWT_SECRET=secret, SUPABASE_ANON_KEY=anon,
               SUPARAG_SERVE_HOST="127.0.0.1", SUPARAG_SERVE_PORT=str(port),
               SUPARAG_EDGE_RATE_LIMIT=str(max(600, per_minute * 2)),
               PYTHONPATH=str(_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    err_console.print("starting suparag serve…")
    log = open(_LOG, "w")  # noqa: SIM115 (the server's, closed when it ends)
    return subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env, text=True,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait_ready(base: str, server: subprocess.Popen[str], anon: str, token: str) -> None:
    """Until the service answers a search (the model loaded); that search is not counted."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"suparag serve exited: its output is in {_LOG}")
        try:
            response = httpx.post(f"{base}/functions/v1/search", json={"query": "warm up"},
                                  headers={"apikey": anon, "Authorization": f"Bearer {token}"},
                                  timeout=60)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise BenchError("suparag serve did not answer within 180 s")


def _timing_ms(header: str, metric: str = "model") -> float:
    """One metric's duration from a Server-Timing header (0 when absent)."""
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if name == metric and rest.startswith("dur="):
            return float(rest[4:])
    return 0.0


async def _phase(base: str, anon: str, tokens: list[str], queries: list[list[str]],
                 k: int) -> dict[str, Any]:
    latencies: list[float] = []
    model: list[float] = []
    database: list[float] = []
    errors = 0
    failures: dict[str, int] = {}  # what the errors were: HTTP status and code, or exception
    limits = httpx.Limits(max_connections=len(tokens) + 4)

    async def client(http: httpx.AsyncClient, token: str, texts: list[str]) -> None:
        nonlocal errors
        headers = {"apikey": anon, "Authorization": f"Bearer {token}"}
        for text in texts:
            started = time.perf_counter()
            try:
                response = await http.post("/functions/v1/search",
                                           json={"query": text, "k": k}, headers=headers)
            except httpx.HTTPError as exc:
                errors += 1
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                errors += 1
                try:
                    code = str(response.json().get("code", ""))
                except ValueError:
                    code = ""
                what = f"{response.status_code} {code}".strip()
                failures[what] = failures.get(what, 0) + 1
                continue
            latencies.append(elapsed)
            timing = response.headers.get("server-timing", "")
            model.append(_timing_ms(timing, "model"))
            database.append(_timing_ms(timing, "db"))

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, t, q) for t, q in zip(tokens, queries, strict=True)))
        seconds = time.perf_counter() - started
    if not latencies:
        raise BenchError(f"every search failed: suparag serve's output is in {_LOG}")
    stats = summary(latencies)
    return {"n": len(latencies), "errors": errors, "error_kinds": failures,
            "p50_ms": round(stats["p50"], 2),
            "p95_ms": round(stats["p95"], 2), "max_ms": round(stats["max"], 2),
            "mean_ms": round(stats["mean"], 2), "per_second": round(len(latencies) / seconds, 1),
            "model_share": round(sum(model) / sum(latencies), 3),
            "model_p50_ms": round(float(np.percentile(model, 50)), 2),
            "db_p50_ms": round(float(np.percentile(database, 50)), 2)}


def _cleanup(url: str, users: list[User]) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute("delete from public.documents where team = 'search-bench'")
        conn.execute("delete from auth.users where id = any(%s)", ([u.id for u in users],))


def print_report(r: dict[str, Any]) -> None:
    print(f"search-api: {r['clients']} clients x {r['requests_per_client']} searches, "
          f"{r['documents']} documents, k={r['k']}, model {r['model']}")
    for phase in ("cold", "warm"):
        p = r[phase]
        print(f"  {phase}: p50 {p['p50_ms']} ms, p95 {p['p95_ms']} ms (goal <= "
              f"{r['goal_p95_ms'][phase]:g}), max {p['max_ms']} ms, {p['per_second']}/s, "
              f"model share {p['model_share']:.0%}, database p50 {p['db_p50_ms']} ms, "
              f"errors {p['errors']}"
              + (f" ({', '.join(f'{n} x {w}' for w, n in p['error_kinds'].items())})"
                 if p["errors"] else ""))
    print_load(r)
