"""`suparag bench`: the benchmarks in bench/, each printing figures measured in one run."""

from __future__ import annotations

import functools
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli._common import JsonOption
from worker.jobs.batching import (
    DEFAULT_CLAIM_BUDGETS,
    DEFAULT_CLAIM_DOCUMENTS,
    DEFAULT_TOKEN_BUDGET,
)

app = typer.Typer(
    help="Benchmarks: figures and ratios measured in one run, never pass/fail tests. Each "
    "starts its own temporary embedded PostgreSQL unless given --db-url; progress goes to "
    "stderr, so --json output is clean.",
    no_args_is_help=True,
)

BenchDbUrl = Annotated[
    str | None,
    typer.Option("--db-url", help="A database to run in instead of a temporary embedded "
                 "server (migrated if needed; the bench's documents are deleted afterwards).",
                 show_default=False),
]
InProcess = Annotated[
    bool,
    typer.Option("--in-process", help="Run the worker on a thread of this process instead of "
                 "the real `suparag worker` command in its own process."),
]
BatchSize = Annotated[
    int, typer.Option(min=1, max=1024, help="The most documents a worker's claim takes (as "
                      "`suparag worker --batch-size`).")
]


@app.command()
def worker(
    docs: Annotated[int, typer.Option(min=1, help="Documents to embed (1-6 chunks each).")] = 200,
    batch_size: BatchSize = DEFAULT_CLAIM_DOCUMENTS,
    token_budget: Annotated[
        int, typer.Option(min=64, help="Padded tokens per model call, the worker's and the "
                          "bare model's (as `suparag worker --token-budget`).")
    ] = DEFAULT_TOKEN_BUDGET,
    claim_budgets: Annotated[
        int, typer.Option(min=1, max=256, help="Token budgets of documents one claim takes (as "
                          "`suparag worker --claim-budgets`).")
    ] = DEFAULT_CLAIM_BUDGETS,
    backend: Annotated[str, typer.Option(help="The local model's backend: `torch` (fp32) or "
                                         "`onnx-int8` (as SUPARAG_EMBEDDING_BACKEND).")] = "torch",
    lanes: Annotated[int | None, typer.Option(
        min=1, max=64, help="The worker's `--lanes` (model calls at once); default: the "
        "worker's own (one per core on torch).", show_default=False)] = None,
    warm_up_docs: Annotated[int | None, typer.Option(
        min=1, help="Documents the worker embeds before the clock starts (other texts of "
        "the same kind); default: as many as --docs, at most 300. A fresh worker's first "
        "few hundred documents grow its memory heaps.", show_default=False)] = None,
    in_process: InProcess = False,
    repeat: Annotated[int, typer.Option(
        min=1, max=20, help="Measure this many times in a row and judge the goal by the "
        "ratios' median (this machine's speed moves between runs).")] = 1,
    db_url: BenchDbUrl = None,
    json_out: JsonOption = False,
) -> None:
    """The worker's end-to-end embedding rate against the bare model's. Goal: ratio >= 0.95.

    Bare model: the same documents chunked as the worker chunks them, sorted
    by length in calls of the same token budget, through the same embed call.
    End to end: a worker warmed up on as many documents (other texts, at most 300), then
    idle; all documents inserted in one transaction; the clock runs from
    the commit until every document is ready. With --repeat N: N such runs, each
    one's figures, and the median ratio.
    """
    from bench import worker as bench_worker
    from bench._common import emit

    measure = functools.partial(
        bench_worker.run, docs=docs, batch_size=batch_size, in_process=in_process,
        db_url=db_url, backend=backend, token_budget=token_budget, claim_budgets=claim_budgets,
        lanes=lanes, warm_up_docs=warm_up_docs)
    if repeat == 1:
        emit(measure(), json_out, bench_worker.print_report)
    else:
        emit(bench_worker.repeated(repeat, measure), json_out, bench_worker.print_repeated)


@app.command()
def freshness(
    n: Annotated[int, typer.Option("--n", min=1, help="Documents to insert.")] = 40,
    rate: Annotated[
        float, typer.Option(min=0.01, help="Inserts per second, each its own transaction.")
    ] = 2.0,
    max_paragraphs: Annotated[
        int, typer.Option(min=1, help="Each document has 1 to this many paragraphs of 3-7 "
                          "sentences; 3 makes notes of one or two chunks, 14 up to six.")
    ] = 3,
    batch_size: BatchSize = DEFAULT_CLAIM_DOCUMENTS,
    backlog: Annotated[
        int, typer.Option(min=0, help="First insert this many documents (1-14 paragraphs) in "
                          "one statement, a bulk import the commits must not wait for; goal "
                          "then p95 <= 1 s.")
    ] = 0,
    in_process: InProcess = False,
    db_url: BenchDbUrl = None,
    json_out: JsonOption = False,
) -> None:
    """Commit-to-embedded latency of single inserts at a steady rate. Goal: p95 <= 100 ms.

    Measured by the client (commit return to the first 5 ms poll that sees
    the document ready) and by the database's own clock (embedded_at -
    created_at), next to the model's own time for the same texts; p50, p95
    and max of each.
    """
    from bench import freshness as bench_freshness
    from bench._common import emit

    result = bench_freshness.run(n=n, rate=rate, max_paragraphs=max_paragraphs,
                                 batch_size=batch_size, backlog=backlog,
                                 in_process=in_process, db_url=db_url)
    emit(result, json_out, bench_freshness.print_report)


@app.command()
def search(
    chunks: Annotated[
        int, typer.Option(min=10, help="Chunks to load (random 384-dim vectors, 10 per "
                          "document).")
    ] = 100_000,
    queries: Annotated[int, typer.Option(min=1, help="Queries per caller.")] = 200,
    clients: Annotated[
        int, typer.Option(min=1, help="Connections searching at once in the throughput "
                          "phase.")
    ] = 8,
    maintenance_work_mem: Annotated[
        str | None,
        typer.Option(help="PostgreSQL memory for the index build, e.g. 3GB. Default: sized "
                     "from --chunks so the HNSW graph fits.", show_default=False),
    ] = None,
    table_space: Annotated[bool, typer.Option(
        help="Also time the same vectors in a table embedding space.")] = False,
    compare_sql: Annotated[
        Path | None,
        typer.Option("--compare-sql", help="Then run this SQL file (e.g. an earlier "
                     "match_documents) and measure again on the same data and queries.",
                     show_default=False),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option("--db-url", help="An empty database to load the corpus into (it stays "
                     "there) instead of a temporary embedded server.", show_default=False),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Search latency, recall@10 and throughput under RLS, for a reader of 99% and of 1%.

    Times match_documents and hybrid_search as each user (role authenticated
    with JWT claims, as PostgREST runs them) and compares match_documents'
    rows with an exact scan of the same caller's rows, then measures
    queries/s with --clients connections at once. Give --db-url an empty
    database: the bench rebuilds the chunk index.
    """
    from bench import search as bench_search
    from bench._common import emit

    result = bench_search.run(chunks=chunks, queries=queries, clients=clients,
                              maintenance_work_mem=maintenance_work_mem,
                              table_space=table_space, compare_sql=compare_sql,
                              db_url=db_url)
    emit(result, json_out, bench_search.print_report)


@app.command()
def answers(
    n: Annotated[int, typer.Option("--n", min=1, help="Questions to ask.")] = 30,
    rate: Annotated[
        float, typer.Option(min=0.01, help="Questions per second, each its own insert.")
    ] = 1.0,
    docs: Annotated[int, typer.Option(min=1, help="Documents in the corpus (1-6 paragraphs "
                                      "each), embedded before the clock starts.")] = 200,
    backlog: Annotated[int, typer.Option(min=0, help="Documents committed just before the "
                                         "first question, so questions are answered while "
                                         "the worker embeds them.")] = 0,
    delivery: Annotated[str | None, typer.Option(
        help="Instead: compare answer delivery paths with many subscribers, `broadcast` "
             "(private topics), `changes` (postgres_changes) or `both`; a streamed chat "
             "double writes the answers. Uses --subscribers and --rate.")] = None,
    subscribers: Annotated[int, typer.Option(
        min=1, help="With --delivery: signed-in subscribers per path, one question each.")
    ] = 200,
    db_url: BenchDbUrl = None,
    json_out: JsonOption = False,
) -> None:
    """Question to answer as an app sees it: insert over /rest/v1, answer over Realtime.

    Runs the local API and the real `suparag worker`; supabase-py's async
    client asks at a steady rate and times each answer's `done` event. Also
    the worker's share by the database's clock (answers.updated_at -
    questions.created_at) and what delivery adds; p50, p95 and max of each.

    With --delivery: SUBSCRIBERS users per path each join their answers (a private
    Broadcast topic, or postgres_changes on answers) and ask one question; time to the
    first text and to done, and the Realtime server's authorization statements per
    message delivered.
    """
    from bench._common import emit

    if delivery is not None:
        from bench import delivery as bench_delivery

        emit(bench_delivery.run(subscribers=subscribers, rate=rate, delivery=delivery,
                                db_url=db_url), json_out, bench_delivery.print_report)
        return
    from bench import answers as bench_answers

    result = bench_answers.run(n=n, rate=rate, docs=docs, backlog=backlog, db_url=db_url)
    emit(result, json_out, bench_answers.print_report)


@app.command()
def chaos(
    seconds: Annotated[float, typer.Option(min=1, help="Seconds of chaos before the drain.")]
    = 120.0,
    workers: Annotated[int, typer.Option(min=1, max=8, help="`suparag worker` processes on "
                                         "the queue.")] = 2,
    restarts: Annotated[int, typer.Option(min=0, max=10, help="Database restarts, evenly "
                                          "spaced (alternately fast and immediate).")] = 2,
    kill_every: Annotated[float, typer.Option(min=0.5, help="Seconds between SIGKILLs of a "
                                              "random worker.")] = 4.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Driver operations per second.")] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the driver, the kills and the faults.")] = 14,
    json_out: JsonOption = False,
) -> None:
    """The embedding guarantees under faults: kills, database restarts, a misbehaving API.

    Loopback only, on a temporary embedded PostgreSQL: worker processes on one
    queue use an OpenAI-compatible double that injects 429 + Retry-After, 500,
    timeouts and slow answers; a driver inserts, edits and deletes documents.
    After the drain a checker verifies every document, chunk and vector.
    Exits 1 on any violation.
    """
    from bench import chaos as bench_chaos
    from bench._common import emit

    result = bench_chaos.run(seconds=seconds, workers=workers, restarts=restarts,
                             kill_every=kill_every, rate=rate, seed=seed)
    emit(result, json_out, bench_chaos.print_report)
    if result["violations"]:
        raise typer.Exit(code=1)


@app.command()
def api(
    clients: Annotated[int, typer.Option(min=1, max=500, help="Signed-in clients, each a "
                                         "different user.")] = 50,
    seconds: Annotated[float, typer.Option(min=1, help="Seconds per phase.")] = 60.0,
    slow: Annotated[int, typer.Option(min=0, help="Slow requests (pg_sleep(5) rpcs) kept "
                                      "running in the second phase.")] = 8,
    docs: Annotated[int, typer.Option(min=1, help="Documents in the corpus (random "
                                      "vectors).")] = 500,
    json_out: JsonOption = False,
) -> None:
    """The local API under load: rpc, inserts, selects, Realtime joins; then with slow calls.

    Starts a temporary embedded PostgreSQL and the local API; clients over real
    HTTP mix rpc('match_documents') (a precomputed query vector), inserts,
    selects and Realtime subscriptions. Throughput, p50/p95/p99 per call type,
    errors by status (503s apart), and the fast calls' p95 with slow requests
    running against the quiet run (goal: within 2x).
    """
    from bench import api as bench_api
    from bench._common import emit

    result = bench_api.run(clients=clients, seconds=seconds, slow=slow, docs=docs)
    emit(result, json_out, bench_api.print_report)


@app.command("search-api")
def search_api(
    clients: Annotated[int, typer.Option(min=1, max=500, help="Concurrent signed-in clients, "
                                         "each a different user.")] = 20,
    requests: Annotated[int, typer.Option(min=1, help="Searches per client per phase.")] = 20,
    docs: Annotated[int, typer.Option(min=1, help="Documents every client may read "
                                      "(random vectors).")] = 10_000,
    db_url: BenchDbUrl = None,
    json_out: JsonOption = False,
) -> None:
    """Search over HTTP as signed-in users: p95 cold and warm. Goals: 50 / 15 ms.

    POST /functions/v1/search on the real `suparag serve`: p50/p95 end to end and the
    model's share, query-vector cache cold then warm. Goals: p95 <= 50 ms cold, <= 15 warm."""
    from bench import search_api as bench_search_api
    from bench._common import emit

    result = bench_search_api.run(clients=clients, requests=requests, docs=docs, db_url=db_url)
    emit(result, json_out, bench_search_api.print_report)


@app.command("ingest-pdf")
def ingest_pdf(
    pages: Annotated[int, typer.Option(min=1, help="Pages in the generated text PDF.")] = 200,
    repeat: Annotated[int, typer.Option(min=1, help="Reads of the file; best and median "
                                        "are reported.")] = 3,
    json_out: JsonOption = False,
) -> None:
    """PDF ingest speed in pages per second.

    `suparag ingest`'s reading of a text PDF (PDFium's per-page text, page markers,
    clean-up), without the upsert or embedding."""
    from bench import ingest_pdf as bench_pdf
    from bench._common import emit

    emit(bench_pdf.run(pages=pages, repeat=repeat), json_out, bench_pdf.print_report)


@app.command()
def queue(
    workers: Annotated[int, typer.Option(min=1, max=32, help="The largest number of `suparag "
                                         "worker` processes; rounds run 1, 2, 4, ... up to "
                                         "it.")] = 8,
    docs: Annotated[int, typer.Option(min=1, help="Documents per round (1-6 chunks each), "
                                      "inserted in one transaction.")] = 2000,
    batch_size: BatchSize = 16,
    plot: Annotated[Path | None, typer.Option(help="Also draw the scaling curve (a PNG) "
                                              "here.", show_default=False)] = None,
    json_out: JsonOption = False,
) -> None:
    """Many workers on one queue with an embedder that costs nothing. Goal: >= 500 docs/s.

    On a temporary embedded PostgreSQL, N real worker processes embed through an
    OpenAI-compatible double answering at once with a fixed vector, so the queue,
    the chunker and the write-back are measured: documents/s and chunks/s per N,
    the database's CPU share, lock waits, the claim's p50/p95. Every document must
    be written exactly once and no text sent twice; exits 1 on any violation.
    """
    from bench import queue as bench_queue
    from bench._common import emit

    result = bench_queue.run(workers=workers, docs=docs, batch_size=batch_size)
    emit(result, json_out, bench_queue.print_report)
    if plot is not None:
        bench_queue.plot(result, plot)
    if result["violations"]:
        raise typer.Exit(code=1)


class ImportVia(StrEnum):
    """How `bench bulk-insert` imports its rows."""

    api = "api"
    ingest = "ingest"


@app.command("bulk-insert")
def bulk_insert(
    rows: Annotated[int, typer.Option(min=1, help="Documents the import sends.")] = 100_000,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per request (and per "
                                       "transaction).")] = 2000,
    workers: Annotated[int, typer.Option(min=1, max=16, help="`suparag worker` processes "
                                         "embedding through the double.")] = 2,
    interrupt: Annotated[float, typer.Option(min=0.01, max=0.99, help="Share of the batches "
                                             "sent before the first run is cut off.")] = 0.4,
    via: Annotated[ImportVia, typer.Option(
        help="api: an app's script posting to /rest/v1; ingest: one file per row, "
        "`suparag ingest` killed and run again (--batch does not apply: it writes 50 "
        "files a transaction).")] = ImportVia.api,
    json_out: JsonOption = False,
) -> None:
    """A bulk import, cut off and run again, beside searches.

    --via api: an app's script on supabase-py posts the rows in batches with ids
    derived from their source keys and `upsert(..., ignore_duplicates=True)`, so
    the re-run inserts only what is missing. --via ingest: the rows are files,
    and `suparag ingest` is killed partway and run again, which must find the
    committed files unchanged. Reports rows/s, the wake-ups per batch, search
    p95 during the import against before, and the workers' time to embed it all
    (an embedding double: the queue is measured). Exits 1 if a row is lost or
    doubled or a document is not written back once.
    """
    from bench import bulk_insert as bench_bulk
    from bench._common import emit

    result = bench_bulk.run(rows=rows, batch=batch, workers=workers, interrupt=interrupt,
                            via=via.value)
    emit(result, json_out, bench_bulk.print_report)
    if result["violations"]:
        raise typer.Exit(code=1)


@app.command()
def spaces(
    chunks: Annotated[int, typer.Option(min=1, help="Chunks in the active space (documents "
                                        "chunked by the worker's chunker).")] = 20_000,
    rate: Annotated[float, typer.Option(min=0.1, help="Searches per second in the loop.")] = 10.0,
    phase_seconds: Annotated[float, typer.Option(
        min=0.1, help="Seconds of searching before the backfill, after it, and after the "
        "switch.")] = 5.0,
    token_budget: Annotated[int, typer.Option(
        min=64, max=65536, help="Padded tokens per model call, for the bare model and the "
        "worker.")] = DEFAULT_TOKEN_BUDGET,
    bare_sample: Annotated[int, typer.Option(min=1, help="Chunks the bare model is timed on "
                                             "(a random sample of the loaded ones).")] = 2_000,
    db_url: BenchDbUrl = None,
    json_out: JsonOption = False,
) -> None:
    """A model change under load: searches during a backfill and across activate.

    Search p50/p95 before, during and after filling a second
    embedding space and across `activate`; failed searches (goal 0); backfill rate vs the
    bare model (goal >= 0.85); time from activate to the first answer from the new space."""
    from bench import spaces as bench_spaces
    from bench._common import emit

    result = bench_spaces.run(chunks=chunks, rate=rate, phase_seconds=phase_seconds,
                              token_budget=token_budget, bare_sample=bare_sample,
                              db_url=db_url)
    emit(result, json_out, bench_spaces.print_report)


@app.command("cli")
def cli_speed(
    runs: Annotated[int, typer.Option(min=1, max=1000, help="Timed runs of each command.")] = 10,
    docs: Annotated[int, typer.Option(min=1, max=1_000_000, help="Documents to search "
                                      "(random vectors under the configured model).")] = 1000,
    db_url: BenchDbUrl = None,
    json_out: JsonOption = False,
) -> None:
    """`suparag --help` and `suparag search` as new processes, with the local stack running
    (started by the bench). Goals: search under 1 s wall, --help under 0.5 s (issue 16)."""
    from bench import cli_speed as bench_cli
    from bench._common import emit

    emit(bench_cli.run(runs=runs, docs=docs, db_url=db_url), json_out, bench_cli.print_report)
