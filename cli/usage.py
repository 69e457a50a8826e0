"""`suparag usage`: what the workers' model calls cost, per feature and model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, print_json, resolve_db_url
from worker.db import connect


def usage(
    days: Annotated[
        float | None,
        typer.Option(min=0, help="Only the last this many days. Default: everything recorded.",
                     show_default=False),
    ] = None,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Model calls, tokens in and out, and latency, per feature and model.

    Read from suparag_private.usage, where the answer worker records every
    question embedding and every chat completion (and `suparag worker`
    every document embedding batch).
    """
    from worker.usage import summary

    with connect(resolve_db_url(db_url)) as conn:
        lines = summary(conn, since_days=days)
    if json_out:
        print_json([asdict(line) for line in lines])
        return
    if not lines:
        console.print("No usage recorded yet: ask a question with `suparag ask`.")
        return
    table = Table(title="Usage" + (f" (last {days:g} days)" if days is not None else ""))
    for column in ("feature", "model", "calls", "input tokens", "output tokens",
                   "latency avg ms", "latency p95 ms"):
        table.add_column(column, justify="left" if column in ("feature", "model") else "right")
    for line in lines:
        table.add_row(escape(line.feature), escape(line.model), str(line.calls),
                      f"{line.input_tokens:,}", f"{line.output_tokens:,}",
                      f"{line.latency_ms_avg:.1f}", f"{line.latency_ms_p95:.1f}")
    console.print(table)
