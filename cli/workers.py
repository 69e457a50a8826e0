"""`suparag worker`: keep document_chunks in sync with documents, and answer questions."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from enum import StrEnum
from types import FrameType
from typing import Annotated, Any

import typer
from rich.logging import RichHandler

from cli._common import DbUrlOption, JsonOption, err_console, print_json, resolve_db_url
from worker.jobs.batching import (
    DEFAULT_CLAIM_BUDGETS,
    DEFAULT_CLAIM_DOCUMENTS,
    DEFAULT_TOKEN_BUDGET,
)
from worker.jobs.queue import WorkerConfig
from worker.jobs.service import Service, ServiceConfig
from worker.logs import JsonFormatter
from worker.models.factory import embedder_from_settings
from worker.settings import get_settings


def _give_up(seconds: float) -> None:
    logging.getLogger("suparag.worker").error(
        "the batch in hand did not finish within --shutdown-timeout %.0f s: exiting; its "
        "leases run out and another worker takes its jobs", seconds)
    logging.shutdown()
    os._exit(1)


class LogFormat(StrEnum):
    """How the worker logs."""

    rich = "rich"
    json = "json"


class Only(StrEnum):
    """Which queue a worker serves."""

    embeddings = "embeddings"
    answers = "answers"


def worker(
    once: Annotated[
        bool, typer.Option("--once", envvar="SUPARAG_WORKER_ONCE",
                           help="Drain the queue, then exit (for cron and CI).")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1024, envvar="SUPARAG_WORKER_BATCH_SIZE",
                          help="Most documents one claim takes; a claim "
                          "takes about --claim-budgets x --token-budget tokens of them.")
    ] = DEFAULT_CLAIM_DOCUMENTS,
    token_budget: Annotated[
        int, typer.Option(min=64, max=1_000_000, envvar="SUPARAG_WORKER_TOKEN_BUDGET",
                          help="Padded tokens per model call (texts "
                          "sorted by length, each padded to the call's longest); the "
                          "README has the measurement behind the default.")
    ] = DEFAULT_TOKEN_BUDGET,
    claim_budgets: Annotated[
        int, typer.Option(min=1, max=256, envvar="SUPARAG_WORKER_CLAIM_BUDGETS",
                          help="Token budgets of bulk work one claim takes; its texts are "
                          "sorted by length together, so more budgets pad less (edits never "
                          "wait for a claim: they are taken between its model calls).")
    ] = DEFAULT_CLAIM_BUDGETS,
    lanes: Annotated[
        int | None, typer.Option(min=1, max=64, envvar="SUPARAG_WORKER_LANES",
                                 help="Model calls run at once. Default: for a local model on "
                                 "the CPU, one per core, torch at one thread each (faster than "
                                 "one call on every core when the cores are shared; README); "
                                 "else 1.", show_default=False)
    ] = None,
    pin_lanes: Annotated[
        bool, typer.Option("--pin-lanes/--no-pin-lanes", envvar="SUPARAG_WORKER_PIN_LANES",
                           help="With exactly as many lanes as the CPUs this process may run "
                           "on, pin each lane's thread to one of them (a preempted lane "
                           "resumes on its own core's warm caches).")
    ] = True,
    sweep: Annotated[
        float, typer.Option(min=0.5, envvar="SUPARAG_WORKER_SWEEP",
                            help="Seconds between sweeps of the queue when no "
                            "wake-up arrives (a job falling due sooner shortens the wait).")
    ] = 30.0,
    http_port: Annotated[
        int | None, typer.Option(envvar="SUPARAG_WORKER_HTTP_PORT",
                                 help="Serve wake-ups on this port: POST any path wakes the "
                                 "worker (point suparag_private.settings.worker_url at it for "
                                 "pg_net); GET /health reports, /health/live and "
                                 "/health/ready answer 200 or 503 for orchestrators. Off "
                                 "unless given.")
    ] = None,
    http_host: Annotated[str, typer.Option(envvar="SUPARAG_WORKER_HTTP_HOST",
                                           help="Interface for --http-port.")] = "127.0.0.1",
    max_attempts: Annotated[
        int, typer.Option(min=1, envvar="SUPARAG_WORKER_MAX_ATTEMPTS",
                          help="Attempts before a document is marked failed.")
    ] = 5,
    lease: Annotated[
        int, typer.Option(min=10, envvar="SUPARAG_WORKER_LEASE",
                          help="Seconds a claimed job stays ours; after that another "
                          "worker may take it (a crashed worker's jobs come back).")
    ] = 300,
    no_listen: Annotated[
        bool, typer.Option("--no-listen", envvar="SUPARAG_WORKER_NO_LISTEN",
                           help="Do not LISTEN (e.g. behind a transaction-mode "
                           "pooler); rely on HTTP wake-ups and the sweep.")
    ] = False,
    only: Annotated[
        Only | None,
        typer.Option("--only", envvar="SUPARAG_WORKER_ONLY",
                     help="Serve one queue: `embeddings` (documents) or `answers` "
                     "(questions). Default: both.", show_default=False),
    ] = None,
    shutdown_timeout: Annotated[
        float | None, typer.Option(min=0.1, envvar="SUPARAG_WORKER_SHUTDOWN_TIMEOUT",
                                   help="Seconds SIGTERM waits for the batch in hand; then the "
                                   "worker exits 1 anyway and its leases run out for another "
                                   "worker. Set it below the orchestrator's own kill timeout "
                                   "(Kubernetes 30 s, docker stop 10 s). Unset: wait for the "
                                   "batch however long it takes.", show_default=False)
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(envvar="SUPARAG_LOG_FORMAT",
                                help="`rich` for people, `json` (one object a line, one line "
                                "per batch with its figures) for a supervisor.")
    ] = LogFormat.rich,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", envvar="SUPARAG_WORKER_VERBOSE",
                                          help="Log every wake-up.")] = False,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run the workers: embed documents and answer questions as they are committed.

    Wakes on LISTEN/NOTIFY, on HTTP POSTs (--http-port; what the pg_net trigger
    calls), on Supabase Realtime changes of the queue (when SUPABASE_URL and
    SUPABASE_SERVICE_ROLE_KEY are set) and on a sweep timer, so a lost wake-up
    delays nothing for long. Embeddings and answers each run on a loop of
    their own, so neither waits for the other. Any number of workers may
    share one database. SIGTERM or Ctrl-C finishes the
    batch in hand and exits. The model comes from SUPARAG_EMBEDDING_PROVIDER /
    SUPARAG_EMBEDDING_MODEL (default: the packaged all-MiniLM-L6-v2). Questions
    are answered as their askers, by SUPARAG_LLM_MODEL when set, else
    extractively (quoted passages). Model calls are metered (`suparag usage`).
    """
    handler: logging.Handler
    if log_format == LogFormat.json:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        handler = RichHandler(console=err_console, show_path=False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[handler], force=True)
    for noisy in ("httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from worker.jobs.answering import AnswerConfig, AnswerWorker
    from worker.jobs.embedding import EmbeddingWorker
    from worker.jobs.queue import QueueWorker
    from worker.models.factory import llm_from_settings
    from worker.usage import MeteredEmbedder

    settings = get_settings()
    url = resolve_db_url(db_url)
    embedder = embedder_from_settings(settings)
    workers: list[QueueWorker[Any]] = []
    if only != Only.answers:
        workers.append(EmbeddingWorker(
            url, MeteredEmbedder(embedder, url, feature="embedding.documents"),
            config=WorkerConfig(batch_size=batch_size, max_attempts=max_attempts,
                                lease_seconds=lease), token_budget=token_budget,
            claim_budgets=claim_budgets, lanes=lanes, pin_lanes=pin_lanes))
    if only != Only.embeddings:
        workers.append(AnswerWorker(url, embedder, llm=llm_from_settings(settings),
                                    config=AnswerConfig(max_attempts=max_attempts,
                                                        lease_seconds=lease,
                                                        broadcast=settings.answer_broadcast)))
    service = Service(workers, service=ServiceConfig(
        sweep_seconds=sweep, http_host=http_host, http_port=http_port, listen=not no_listen,
        supabase_url=settings.supabase_url, supabase_key=settings.supabase_service_role_key,
        wake_secret=settings.wake_secret))

    def stop(signum: int, frame: FrameType | None) -> None:
        within = "" if shutdown_timeout is None else f" (at most {shutdown_timeout:g} s)"
        note = f"{signal.Signals(signum).name}: finishing the batch in hand{within}…"
        if log_format == LogFormat.json:
            logging.getLogger("suparag.worker").info("%s", note, extra={"fields": {
                "event": "stopping", "shutdown_timeout": shutdown_timeout}})
        else:
            err_console.print(note)
        service.stop()
        # The deadline: a batch stuck in a model call must not outlive the orchestrator's
        # patience; its leases run out and another worker takes the jobs.
        if shutdown_timeout is not None:
            timer = threading.Timer(shutdown_timeout, _give_up, args=(shutdown_timeout,))
            timer.daemon = True
            timer.start()
        # A second signal is not graceful.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    totals = service.run(once=once)
    answered = service.answer_totals
    if json_out:
        print_json({**vars(totals),
                    "answers": vars(answered) if answered is not None else None})
        return
    lines: list[tuple[str, dict[str, Any]]] = []
    if only != Only.answers:
        lines.append((
            f"Embedded {totals.embedded} documents ({totals.chunks_embedded} chunks embedded, "
            f"{totals.chunks_reused} reused); {totals.retrying} to retry, "
            f"{totals.failed} failed, {totals.superseded} superseded.",
            {"event": "summary", "queue": "embeddings", **vars(totals)}))
    if answered is not None:
        lines.append((f"Answered {answered.answered} questions; {answered.retrying} to "
                      f"retry, {answered.failed} failed.",
                      {"event": "summary", "queue": "answers", **vars(answered)}))
    for text, fields in lines:
        if log_format == LogFormat.json:  # every line of the stream stays JSON
            logging.getLogger("suparag.worker").info("%s", text, extra={"fields": fields})
        else:
            err_console.print(text)
