"""`suparag status`: how far the embedding pipeline has got."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, print_json, resolve_db_url
from worker.db import connect
from worker.status import pipeline_status


def status(db_url: DbUrlOption = None, json_out: JsonOption = False) -> None:
    """Show how far embedding has got: documents, queue, failures, models.

    Documents by embedding status; the job queue (due now, leased by a worker,
    backing off after a failure, failed) with the age of the oldest pending
    job; and the embedding models with stored vectors.
    """
    with connect(resolve_db_url(db_url)) as conn:
        state = pipeline_status(conn)
    if json_out:
        print_json(state.to_json())
        return
    docs = state.documents
    console.print(
        f"Documents: {sum(docs.values())} ([green]{docs['ready']} ready[/green], "
        f"[yellow]{docs['pending']} pending[/yellow], [red]{docs['failed']} failed[/red])"
    )
    queue = state.queue
    age = (f", oldest pending for {_duration(queue.oldest_pending_seconds)}"
           if queue.oldest_pending_seconds is not None else "")
    console.print(
        f"Queue: {queue.depth} to do ({queue.due} due now, {queue.leased} leased by a worker, "
        f"{queue.backoff} backing off after a failure){age}"
    )
    if queue.failed:
        console.print(f"[red]{queue.failed} failed[/red] after their last attempt: "
                      "`suparag jobs failed` shows why, `suparag jobs retry --all` requeues.")
    if not state.models:
        console.print("Models: none yet (nothing embedded).")
        return
    table = Table(title="Models with stored vectors")
    table.add_column("model")
    table.add_column("chunks", justify="right")
    table.add_column("documents", justify="right")
    for usage in state.models:
        table.add_row(escape(usage.model), str(usage.chunks), str(usage.documents))
    console.print(table)


def _duration(seconds: float) -> str:
    """3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"
