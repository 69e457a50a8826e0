"""Answer delivery at scale: Realtime Broadcast on private topics against postgres_changes.

    suparag bench answers --delivery both [--subscribers 200] [--rate 2] [--json]

A temporary database (or --db-url), a small public corpus embedded by the local
model, the local API (`python -m worker.devstack.api`, what `suparag dev` runs) and
`suparag worker --only answers` in processes of their own, the worker's chat model a
streaming double (an OpenAI-compatible server on loopback that emits --tokens tokens,
one every --token-ms). Then, per delivery path, --subscribers signed-in users, each
with its own realtime-py client (what supabase-py uses), join:

- broadcast: the private channel `answers:<uid>` (events `delta`, `done`);
- changes: `postgres_changes` on public.answers (RLS decides what each receives).

Each user asks one question over /rest/v1, at --rate questions per second overall. A
path that delivers nothing new for 180 s is cut off there and its missing answers
counted (the figures cover the answers that arrived).
Figures per path: from the insert's response to the first text (first `delta`, or
first answer change with content) and to `done`, p50/p95/max; and the authorization
work of the Realtime server (statements it ran as subscribers, from its
/realtime/v1/metrics) per message it delivered while the questions were answered,
which is what grows with subscribers on a hosted project.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    bench_database,
    emit,
    err_console,
    machine,
    make_documents,
    print_load,
    progress,
    summary,
)
from cli._common import cli_command
from worker.db import connect
from worker.devstack.api.keys import ProjectKeys, load_or_create
from worker.devstack.postgres import free_port
from worker.devstack.processes import LocalApi
from worker.errors import BenchError
from worker.jobs.embedding import EmbeddingWorker
from worker.models.local import SentenceTransformerEmbedder
from worker.users import User, add_user

PATHS = ("broadcast", "changes")
TIMEOUT_SECONDS = 180.0


@contextmanager
def chat_double(tokens: int, token_seconds: float) -> Iterator[str]:
    """An OpenAI-compatible chat server on loopback that streams `tokens` tokens."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Each token is its own small write: with Nagle's algorithm on, a write waits for
        # the client's delayed ACK of the last (up to 40 ms), which a real server's
        # streaming does not add (bench/embedding_double.py).
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(tokens):
                chunk = {"choices": [{"index": 0, "delta": {"content": f" token{i}"}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(token_seconds)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def run(*, subscribers: int = 200, rate: float = 2.0, tokens: int = 10,
        token_ms: float = 20.0, delivery: str = "both", db_url: str | None = None,
        seed: int = 13) -> dict[str, Any]:
    """Measure each delivery path with subscribers signed-in listeners; figures as a dict."""
    if subscribers < 1 or rate <= 0 or tokens < 1 or token_ms < 0:
        raise BenchError("--subscribers and --tokens must be at least 1, --rate above 0")
    if delivery not in (*PATHS, "both"):
        raise BenchError("--delivery is broadcast, changes or both")
    paths = PATHS if delivery == "both" else (delivery,)
    before = machine()
    embedder = SentenceTransformerEmbedder()
    home = Path(tempfile.mkdtemp(prefix="suparag-bench-delivery-"))
    results: dict[str, Any] = {}
    try:
        with bench_database(db_url) as url, connect(url, autocommit=True) as conn, \
                chat_double(tokens, token_ms / 1000) as chat_url:
            tag = uuid.uuid4().hex[:8]
            owner = add_user(conn, f"owner-{tag}@bench.local", team="bench")
            for doc in make_documents(40, seed=seed, paragraphs=(1, 4)):
                conn.execute("insert into public.documents (owner_id, team, visibility, title,"
                             " content) values (%s, 'bench', 'public', %s, %s)",
                             (owner.id, doc.title, doc.content))
            err_console.print("embedding the corpus…")
            worker = EmbeddingWorker(url, embedder)
            try:
                worker.drain()
            finally:
                worker.close()
            users = [add_user(conn, f"u{i}-{tag}@bench.local", team="bench")
                     for i in range(subscribers * len(paths))]
            api = LocalApi(home, port=free_port())
            err_console.print("starting the local API and `suparag worker --only answers`…")
            status, _ = api.start(url)
            keys = load_or_create(home)
            env = {**os.environ, "SUPARAG_LLM_MODEL": "bench-chat",
                   "SUPARAG_LLM_BASE_URL": chat_url, "SUPARAG_LLM_API_KEY": "sk-bench",
                   "SUPARAG_EMBEDDING_PROVIDER": "sentence-transformers",
                   "SUPARAG_EMBEDDING_MODEL": embedder.name}
            proc = subprocess.Popen(cli_command("worker", "--only", "answers", "--db-url", url),
                                    env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _warm_up(conn, owner, proc)
                for i, path in enumerate(paths):
                    group = users[i * subscribers:(i + 1) * subscribers]
                    results[path] = asyncio.run(_measure(status.url, keys, group, path, rate,
                                                         proc))
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                api.stop()
            if db_url is not None:
                conn.execute("delete from auth.users where email like %s",
                             (f"%-{tag}@bench.local",))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result: dict[str, Any] = {
        "bench": "answers-delivery", "subscribers": subscribers, "rate_per_s": rate,
        "tokens": tokens, "token_ms": token_ms, "model": embedder.name,
        "database": "given --db-url" if db_url else "temporary embedded PostgreSQL",
        "paths": results, "machine_before": before, "machine_after": machine(),
    }
    if len(results) == 2:
        result["done_p95_ratio_broadcast_to_changes"] = round(
            results["broadcast"]["insert_to_done_ms"]["p95"]
            / results["changes"]["insert_to_done_ms"]["p95"], 3)
    return result


def _warm_up(conn: Any, owner: User, proc: subprocess.Popen[bytes]) -> None:
    """Not timed: the worker's start (torch, the model) and its first answer."""
    err_console.print("warming up: the worker's first answer…")
    row = conn.execute("insert into public.questions (asker_id, question) values (%s, %s)"
                       " returning id", (owner.id, "What is this corpus about?")).fetchone()
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while conn.execute("select 1 from public.answers where question_id = %s and status ="
                       " 'done'", (row["id"],)).fetchone() is None:
        if proc.poll() is not None:
            raise BenchError(f"the answer worker exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"no first answer in {TIMEOUT_SECONDS:.0f} s")
        time.sleep(0.1)


class _Listener:
    """One user's realtime client and when its answer's first text and done arrived."""

    def __init__(self, user: User, token: str) -> None:
        self.user, self.token = user, token
        self.question: str | None = None
        self.asked_at = 0.0
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.client: Any = None

    def saw_text(self) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()

    def saw_done(self) -> None:
        if self.done_at is None:
            self.done_at = time.perf_counter()
            if self.first_at is None:
                self.first_at = self.done_at


async def _join(api_url: str, keys: ProjectKeys, listener: _Listener, path: str) -> None:
    from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent

    client = AsyncRealtimeClient(f"{api_url}/realtime/v1", token=keys.anon_key,
                                 auto_reconnect=False)
    await client.set_auth(listener.token)
    listener.client = client
    states: list[Any] = []
    if path == "broadcast":
        channel = client.channel(f"answers:{listener.user.id}", {"config": {
            "private": True, "broadcast": {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False}}})
        channel.on_broadcast("delta", lambda m: listener.saw_text())
        channel.on_broadcast("done", lambda m: listener.saw_done())
    else:
        channel = client.channel(f"answers-{listener.user.id}")

        def on_change(payload: Any) -> None:
            record = payload["data"].get("record") or {}
            if record.get("status") == "done":
                listener.saw_done()
            elif record.get("content"):
                listener.saw_text()

        channel.on_postgres_changes(RealtimePostgresChangesListenEvent.All, schema="public",
                                    table="answers", callback=on_change)
    await channel.subscribe(lambda state, error: states.append((state, error)))
    if not states or states[-1][0].value != "SUBSCRIBED":
        raise BenchError(f"a {path} subscriber could not join: {states}")


def _metrics(api_url: str, keys: ProjectKeys) -> dict[str, float]:
    response = httpx.get(f"{api_url}/realtime/v1/metrics",
                         headers={"apikey": keys.service_role_key}, timeout=30)
    response.raise_for_status()
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def _measure(api_url: str, keys: ProjectKeys, users: list[User], path: str,
                   rate: float, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    listeners = [_Listener(u, keys.access_token(u)) for u in users]
    with progress() as bar:
        task = bar.add_task(f"{path}: joining", total=len(listeners))
        for listener in listeners:
            await _join(api_url, keys, listener, path)
            bar.advance(task)
    start_metrics = await asyncio.to_thread(_metrics, api_url, keys)
    async with httpx.AsyncClient(base_url=f"{api_url}/rest/v1", timeout=60) as http:

        async def ask(listener: _Listener, i: int) -> None:
            response = await http.post(
                "/questions", json={"question": f"What does document {i} say about it?"},
                headers={"apikey": keys.anon_key, "Authorization": f"Bearer {listener.token}",
                         "Prefer": "return=representation"})
            listener.asked_at = time.perf_counter()
            if response.status_code != 201:
                raise BenchError(f"asking failed: HTTP {response.status_code} {response.text}")
            listener.question = response.json()[0]["id"]

        with progress() as bar:
            task = bar.add_task(f"{path}: asking at {rate:g}/s", total=len(listeners))
            began = time.perf_counter()
            asks = []
            for i, listener in enumerate(listeners):
                await asyncio.sleep(max(0.0, began + i / rate - time.perf_counter()))
                asks.append(asyncio.create_task(ask(listener, i)))
            await asyncio.gather(*asks)
            last_progress, done = time.perf_counter(), 0
            while done < len(listeners):
                if proc.poll() is not None:
                    raise BenchError(f"the answer worker exited with code {proc.returncode}")
                now_done = sum(1 for x in listeners if x.done_at is not None)
                if now_done > done:
                    done, last_progress = now_done, time.perf_counter()
                elif time.perf_counter() - last_progress > TIMEOUT_SECONDS:
                    # Reported, not raised: a path that cannot keep up is a result.
                    err_console.print(f"{path}: no answer arrived for {TIMEOUT_SECONDS:.0f} s;"
                                      f" {done} of {len(listeners)} delivered")
                    break
                bar.update(task, completed=done)
                await asyncio.sleep(0.1)
    end_metrics = await asyncio.to_thread(_metrics, api_url, keys)
    for listener in listeners:
        await listener.client.close()
    label = "postgres_changes" if path == "changes" else "broadcast"
    queries = (end_metrics[f'suparag_realtime_authorization_queries_total{{path="{label}"}}']
               - start_metrics[f'suparag_realtime_authorization_queries_total{{path="{label}"}}'])
    sent = (end_metrics[f'suparag_realtime_messages_sent_total{{kind="{label}"}}']
            - start_metrics[f'suparag_realtime_messages_sent_total{{kind="{label}"}}'])
    arrived = [x for x in listeners if x.done_at is not None]
    if not arrived:
        raise BenchError(f"{path}: no answer arrived at all")
    first = [((x.first_at or x.done_at or 0.0) - x.asked_at) * 1000 for x in arrived]
    done_ms = [((x.done_at or 0.0) - x.asked_at) * 1000 for x in arrived]
    return {
        "answers_delivered": len(arrived),
        "answers_missing": len(listeners) - len(arrived),
        "insert_to_first_text_ms": summary(first),
        "insert_to_done_ms": summary(done_ms),
        "messages_delivered": int(sent),
        "authorization_queries": int(queries),
        "authorization_queries_per_message": round(queries / sent, 3) if sent else None,
    }


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    print(f"\n{r['subscribers']} signed-in subscribers per path, one question each at "
          f"{r['rate_per_s']:g}/s; streamed answers of {r['tokens']} tokens, one every "
          f"{r['token_ms']:g} ms; {r['database']}")
    print(f"{'':<30}{'first p50':>10}{'p95':>8}{'done p50':>10}{'p95':>8}{'max':>8}"
          f"{'msgs':>8}{'auth q/msg':>12}")
    for path, p in r["paths"].items():
        if p["answers_missing"]:
            path = f"{path} ({p['answers_missing']} missing)"
        f, d = p["insert_to_first_text_ms"], p["insert_to_done_ms"]
        per = p["authorization_queries_per_message"]
        print(f"{path:<30}{f['p50']:>8.0f}ms{f['p95']:>6.0f}ms{d['p50']:>8.0f}ms"
              f"{d['p95']:>6.0f}ms{d['max']:>6.0f}ms{p['messages_delivered']:>8}"
              f"{per if per is not None else '-':>12}")
    if "done_p95_ratio_broadcast_to_changes" in r:
        print(f"done p95, broadcast / changes: {r['done_p95_ratio_broadcast_to_changes']}")
    print_load(r)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--delivery", default="both", choices=(*PATHS, "both"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(run(subscribers=args.subscribers, rate=args.rate, delivery=args.delivery),
         args.json, print_report)


if __name__ == "__main__":
    main()
