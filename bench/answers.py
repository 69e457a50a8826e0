"""Answers: from a question's insert to its answer arriving over Realtime, as an app sees it.

    python -m bench.answers [--n 30] [--rate 1] [--docs 200] [--db-url URL] [--json]

Loads --docs generated documents for one user and embeds them, then starts
the local API (`python -m worker.devstack.api`, what `suparag dev` runs) and the real
`suparag worker` in a process of its own. An app's client, supabase-py's
async client unchanged, signs up over /auth/v1 and subscribes to `answers`
over /realtime/v1. It then inserts N questions through /rest/v1 on a fixed
schedule of --rate per second (open loop: a slow answer does not delay the
next question), after one untimed question that waits out the worker's
start.

Three figures per question:
- client: from the insert's response (the question committed) to the
  Realtime event that carries the answer with status `done`;
- worker (database clock): answers.updated_at - questions.created_at, the
  start of the insert's transaction to the start of the transaction that
  finished the answer: wake-up, claim, the query's embedding, retrieval as
  the asker and the answer's write;
- delivery: client minus worker: what comes after the answer's last write
  starts (its commit, change capture, the per-subscriber RLS check, the
  websocket), less the insert's own time from its transaction's start to
  its HTTP response; so a lower bound on what Realtime adds.

Answers are extractive (quoted passages) unless SUPARAG_LLM_MODEL is set, in
which case the chat model's time is in the figures too; `mode` says which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    Conn,
    Doc,
    RunningWorker,
    bench_database,
    check_queue_empty,
    emit,
    err_console,
    machine,
    make_documents,
    print_load,
    progress,
    summary,
)
from worker.db import as_request, connect
from worker.devstack.api.auth import hash_password
from worker.devstack.api.keys import load_or_create
from worker.devstack.postgres import free_port
from worker.devstack.processes import LocalApi
from worker.errors import BenchError
from worker.jobs.embedding import EmbeddingWorker
from worker.models.local import SentenceTransformerEmbedder
from worker.users import User, add_user

#: Give up on an answer after this long (a stuck worker, not a slow one).
TIMEOUT_SECONDS = 120.0
PASSWORD = "bench password 1"


def run(*, n: int = 30, rate: float = 1.0, docs: int = 200, backlog: int = 0,
        db_url: str | None = None, seed: int = 11) -> dict[str, Any]:
    """Ask n questions at rate per second and time each answer's arrival; figures as a dict.

    With backlog, that many more documents are committed just before the
    first timed question, so the questions are asked while the worker embeds.
    """
    if n < 1 or rate <= 0 or docs < 1 or backlog < 0:
        raise BenchError("--n and --docs must be at least 1, --rate above 0, --backlog 0 "
                         "or more")
    before = machine()
    embedder = SentenceTransformerEmbedder()
    corpus = make_documents(docs, seed=seed, paragraphs=(1, 6))
    questions = _questions(corpus, n, seed)
    home = Path(tempfile.mkdtemp(prefix="suparag-bench-api-"))
    email = f"asker-{os.getpid()}@bench.local"
    owner_email = f"owner-{os.getpid()}@bench.local"
    try:
        with bench_database(db_url) as url, connect(url, autocommit=True) as conn:
            check_queue_empty(conn)
            owner = _load(conn, url, embedder, corpus, owner_email, email)
            extra = make_documents(backlog, seed=seed + 1) if backlog else []

            def queue_backlog() -> None:
                if extra:
                    _insert(conn, owner, extra, title_prefix="Backlog")

            def backlog_pending() -> int:
                row = conn.execute("select count(*) as n from public.documents"
                                   " where title like 'Backlog%%'"
                                   " and embedding_status = 'pending'").fetchone()
                return int(row["n"]) if row else 0

            api = LocalApi(home, port=free_port())
            err_console.print("starting the local API and `suparag worker`…")
            status, _ = api.start(url)
            try:
                with RunningWorker(url, embedder, batch_size=16, in_process=False) as running:
                    timings, pending_after = asyncio.run(_ask_all(
                        status.url, load_or_create(home).anon_key, email, questions, rate,
                        running, queue_backlog, backlog_pending))
            finally:
                api.stop()
            worker_ms = _worker_ms(conn, [t["id"] for t in timings])
            if db_url is not None:  # the users, and so their documents and questions
                conn.execute("delete from auth.users where email = any(%s)",
                             ([email, owner_email],))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    client = [t["client_ms"] for t in timings]
    worker = [worker_ms[t["id"]] for t in timings]
    return {
        "bench": "answers",
        "n": n,
        "rate_per_s": rate,
        "documents": docs,
        "backlog": backlog,
        "backlog_pending_at_last_answer": pending_after,
        "model": embedder.name,
        "modes": sorted({t["mode"] for t in timings}),
        "worker": running.description,
        "database": "given --db-url" if db_url else "temporary embedded PostgreSQL",
        "insert_to_done_event_ms": summary(client),
        "db_created_to_done_ms": summary(worker),
        "delivery_ms": summary([c - w for c, w in zip(client, worker, strict=True)]),
        "questions": [{**t, "db_created_to_done_ms": worker_ms[t["id"]]} for t in timings],
        "machine_before": before,
        "machine_after": machine(),
    }


def _questions(corpus: list[Any], n: int, seed: int) -> list[str]:
    """n questions made of the corpus's own sentences, so each has passages to quote."""
    rng = random.Random(seed)
    sentences = [s.strip() for d in corpus for s in d.content.replace("\n", " ").split(".")
                 if len(s.split()) >= 6]
    return [f"Why {rng.choice(sentences).lower()}?" for _ in range(n)]


def _insert(conn: Conn, owner: User, docs: list[Doc], *, title_prefix: str = "") -> None:
    with as_request(conn, owner.claims()), conn.cursor() as cur:
        cur.executemany(
            "insert into public.documents (owner_id, team, visibility, title, content)"
            " values (%s, 'bench', 'team', %s, %s)",
            [(owner.id, f"{title_prefix} {d.title}".strip(), d.content) for d in docs])


def _load(conn: Conn, url: str, embedder: SentenceTransformerEmbedder, corpus: list[Doc],
          owner_email: str, email: str) -> User:
    """The corpus, owned by the asker's team mate, embedded before the clock starts."""
    owner = add_user(conn, owner_email, team="bench")
    asker = add_user(conn, email, team="bench")
    # The operator sets the asker's password: sign-up refuses an existing email.
    conn.execute("update auth.users set encrypted_password = %s where id = %s",
                 (hash_password(PASSWORD), asker.id))
    _insert(conn, owner, corpus)
    worker = EmbeddingWorker(url, embedder)
    try:
        with progress() as bar:
            task = bar.add_task("embedding the corpus", total=len(corpus))
            worker.drain(on_batch=lambda b: bar.advance(task, b.embedded + b.failed))
    finally:
        worker.close()
    return owner


async def _ask_all(api_url: str, anon_key: str, email: str, questions: list[str], rate: float,
                   running: RunningWorker, before_asking: Callable[[], None],
                   backlog_pending: Callable[[], int]) -> tuple[list[dict[str, Any]], int]:
    """Each question's client latency, and the backlog still pending at the last answer."""
    try:
        from realtime import RealtimePostgresChangesListenEvent
        from supabase import acreate_client
    except ImportError as exc:
        raise BenchError("this bench is an app on the official client: "
                         "pip install supabase (or `pip install -e .[test]`)") from exc

    client = await acreate_client(api_url, anon_key)
    session = (await client.auth.sign_in_with_password(
        {"email": email, "password": PASSWORD})).session
    if session is None:
        raise BenchError("sign-in returned no session")
    deadline = time.monotonic() + 30
    while client.realtime.access_token != session.access_token:  # handed over in a task
        if time.monotonic() > deadline:
            raise BenchError("the client never gave Realtime its token")
        await asyncio.sleep(0.02)
    done: dict[str, tuple[float, str]] = {}  # question id -> (when its done event came, mode)
    arrived = asyncio.Event()
    failures: list[str] = []  # errors of failed answers (callbacks cannot raise to us)

    def on_change(payload: Any) -> None:
        record = payload["data"]["record"]
        if record.get("status") == "done" and record["question_id"] not in done:
            done[record["question_id"]] = (time.perf_counter(), record["mode"])
            arrived.set()
        elif record.get("status") == "failed":
            failures.append(str(record.get("error")))
            arrived.set()

    subscribed = asyncio.Event()
    channel = client.channel("bench-answers")
    channel.on_postgres_changes(RealtimePostgresChangesListenEvent.All, schema="public",
                                table="answers", callback=on_change)
    await channel.subscribe(lambda state, error: subscribed.set()
                            if state.value == "SUBSCRIBED" else None)
    await asyncio.wait_for(subscribed.wait(), 30)

    committed: dict[str, float] = {}

    async def ask(text: str) -> str:
        response = await client.table("questions").insert({"question": text}).execute()
        row: Any = response.data[0]
        committed[str(row["id"])] = time.perf_counter()
        return str(row["id"])

    try:
        # Not timed: the worker's start (torch, the model) and its first answer.
        err_console.print("warming up: the first answer…")
        warm_up = await ask(questions[0])
        while warm_up not in done:
            running.check()
            if time.perf_counter() - committed[warm_up] > TIMEOUT_SECONDS:
                raise BenchError(f"no first answer in {TIMEOUT_SECONDS:.0f} s")
            await asyncio.sleep(0.05)
        del committed[warm_up], done[warm_up]
        await asyncio.to_thread(before_asking)
        with progress() as bar:
            task = bar.add_task(f"asking at {rate:g}/s", total=len(questions))
            start = time.perf_counter()
            asks = []
            for i, text in enumerate(questions):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                asks.append(asyncio.create_task(ask(text)))
                bar.update(task, completed=len(done))
            await asyncio.gather(*asks)
            last = time.perf_counter()
            while len(done) < len(committed):
                running.check()
                if failures:
                    raise BenchError(f"an answer failed: {failures[0]}")
                if time.perf_counter() - last > TIMEOUT_SECONDS:
                    raise BenchError(f"no answer for {TIMEOUT_SECONDS:.0f} s "
                                     f"({len(done)} of {len(committed)} arrived)")
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), 1.0)
                    last = time.perf_counter()
                except TimeoutError:
                    pass
                bar.update(task, completed=len(done))
        pending = await asyncio.to_thread(backlog_pending)
    finally:
        await client.realtime.close()
    return [{"id": qid, "client_ms": (done[qid][0] - at) * 1000, "mode": done[qid][1]}
            for qid, at in committed.items()], pending


def _worker_ms(conn: Conn, question_ids: list[str]) -> dict[str, float]:
    rows = conn.execute(
        "select q.id::text as id, extract(epoch from a.updated_at - q.created_at) * 1000 as ms"
        " from public.questions q join public.answers a on a.question_id = q.id"
        " where q.id = any(%s::uuid[])", (question_ids,)).fetchall()
    return {r["id"]: float(r["ms"]) for r in rows}


def print_report(r: dict[str, Any]) -> None:
    """The figures for people."""
    print(f"\n{r['n']} questions at {r['rate_per_s']:g}/s over {r['documents']} documents, "
          f"model {r['model']}, answers {', '.join(r['modes'])}")
    if r["backlog"]:
        print(f"asked while embedding a backlog of {r['backlog']} documents, committed just "
              f"before the first question; {r['backlog_pending_at_last_answer']} still "
              "pending at the last answer")
    print(f"worker: {r['worker']}; database: {r['database']}")
    print(f"{'':<40}{'p50':>9}{'p95':>9}{'max':>9}")
    for label, key in (("insert to `done` event (client)", "insert_to_done_event_ms"),
                       ("created_at to done (worker, db clock)", "db_created_to_done_ms"),
                       ("delivery (client minus worker)", "delivery_ms")):
        s = r[key]
        print(f"{label:<40}{s['p50']:>7.0f}ms{s['p95']:>7.0f}ms{s['max']:>7.0f}ms")
    share = r["db_created_to_done_ms"]["p50"] / r["insert_to_done_event_ms"]["p50"]
    print(f"worker share of the client p50: {share:.2f}")
    print_load(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="questions to ask")
    parser.add_argument("--rate", type=float, default=1.0, help="questions per second")
    parser.add_argument("--docs", type=int, default=200, help="documents in the corpus")
    parser.add_argument("--backlog", type=int, default=0,
                        help="documents committed just before the first question, so the "
                        "worker embeds while it answers")
    parser.add_argument("--db-url", help="a database to use (default: a temporary server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(n=args.n, rate=args.rate, docs=args.docs, backlog=args.backlog,
                 db_url=args.db_url)
    emit(result, args.json, print_report)


if __name__ == "__main__":
    main()
