"""`suparag worker`: keep document_chunks in sync with documents, and answer questions."""

from __future__ import annotations

import logging
import signal
from enum import StrEnum
from types import FrameType
from typing import Annotated, Any

import typer
from rich.logging import RichHandler

from cli._common import DbUrlOption, JsonOption, err_console, print_json, resolve_db_url
from worker.jobs.batching import DEFAULT_TOKEN_BUDGET
from worker.jobs.queue import WorkerConfig
from worker.jobs.service import Service, ServiceConfig
from worker.models.factory import embedder_from_settings
from worker.settings import get_settings


class Only(StrEnum):
    """Which queue a worker serves."""

    embeddings = "embeddings"
    answers = "answers"


def worker(
    once: Annotated[
        bool, typer.Option("--once", help="Drain the queue, then exit (for cron and CI).")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1024, help="Most documents one claim takes; a claim "
                          "takes about --token-budget tokens of them.")
    ] = 64,
    token_budget: Annotated[
        int, typer.Option(min=64, max=1_000_000, help="Padded tokens per model call (texts "
                          "sorted by length, each padded to the call's longest); the "
                          "README has the measurement behind the default.")
    ] = DEFAULT_TOKEN_BUDGET,
    sweep: Annotated[
        float, typer.Option(min=0.5, help="Seconds between sweeps of the queue when no "
                            "wake-up arrives (a job falling due sooner shortens the wait).")
    ] = 30.0,
    http_port: Annotated[
        int | None, typer.Option(help="Serve wake-ups on this port: POST any path wakes the "
                                 "worker (point suparag_private.settings.worker_url at it for "
                                 "pg_net); GET /health reports. Off unless given.")
    ] = None,
    http_host: Annotated[str, typer.Option(help="Interface for --http-port.")] = "127.0.0.1",
    max_attempts: Annotated[
        int, typer.Option(min=1, help="Attempts before a document is marked failed.")
    ] = 5,
    lease: Annotated[
        int, typer.Option(min=10, help="Seconds a claimed job stays ours; after that another "
                          "worker may take it (a crashed worker's jobs come back).")
    ] = 300,
    no_listen: Annotated[
        bool, typer.Option("--no-listen", help="Do not LISTEN (e.g. behind a transaction-mode "
                           "pooler); rely on HTTP wake-ups and the sweep.")
    ] = False,
    only: Annotated[
        Only | None,
        typer.Option("--only", help="Serve one queue: `embeddings` (documents) or `answers` "
                     "(questions). Default: both.", show_default=False),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every wake-up.")] = False,
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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )
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
                                lease_seconds=lease), token_budget=token_budget))
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
        err_console.print(f"{signal.Signals(signum).name}: finishing the batch in hand…")
        service.stop()
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
    if only != Only.answers:
        err_console.print(
            f"Embedded {totals.embedded} documents ({totals.chunks_embedded} chunks embedded, "
            f"{totals.chunks_reused} reused); {totals.retrying} to retry, "
            f"{totals.failed} failed, {totals.superseded} superseded."
        )
    if answered is not None:
        err_console.print(f"Answered {answered.answered} questions; {answered.retrying} to "
                          f"retry, {answered.failed} failed.")
