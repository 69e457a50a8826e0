"""`suparag jobs`: embedding jobs that ran out of attempts, and requeueing them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, print_json, resolve_db_url
from worker.db import connect
from worker.status import failed_jobs, retry_failed

app = typer.Typer(help="Inspect and retry embedding jobs that failed after their last attempt.")


@app.command()
def failed(db_url: DbUrlOption = None, json_out: JsonOption = False) -> None:
    """List documents whose embedding failed: attempts, last error, when."""
    with connect(resolve_db_url(db_url)) as conn:
        jobs = failed_jobs(conn)
    if json_out:
        print_json([
            {"document_id": str(j.document_id), "title": j.title, "attempts": j.attempts,
             "last_error": j.last_error, "failed_at": j.failed_at.isoformat()}
            for j in jobs
        ])
        return
    if not jobs:
        console.print("No failed jobs.")
        return
    table = Table(title="Failed embedding jobs")
    for column in ("document", "title", "attempts", "last error", "failed at"):
        table.add_column(column, no_wrap=column == "document",
                         justify="right" if column == "attempts" else "left")
    for job in jobs:
        table.add_row(str(job.document_id), escape(job.title), str(job.attempts),
                      escape(job.last_error or ""), f"{job.failed_at:%Y-%m-%d %H:%M:%S %Z}")
    console.print(table)
    console.print("Fix the cause, then `suparag jobs retry ID` (or `--all`).")


@app.command()
def retry(
    document_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Document ids of failed jobs (see `suparag jobs failed`).",
                       show_default=False),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Requeue every failed job.")] = False,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Requeue failed jobs with fresh attempts and wake the workers."""
    if bool(document_ids) == all_:
        raise typer.BadParameter("give document ids or --all (not both)",
                                 param_hint="DOCUMENT_IDS / --all")
    with connect(resolve_db_url(db_url)) as conn:
        count = retry_failed(conn, None if all_ else document_ids)
    if json_out:
        print_json({"requeued": count})
    elif count:
        console.print(f"Requeued {count} document{'s' if count != 1 else ''}; a running worker "
                      "embeds them now (or run `suparag worker --once`).")
    else:
        console.print("No failed jobs to retry.")
