"""`suparag export`: data out of the database, for other tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from cli._common import DbUrlOption, err_console, resolve_db_url
from worker.db import connect

app = typer.Typer(help="Export data for other tools (e.g. fine-tuning sets).")


@app.command("training-data")
def training_data(
    min_feedback: Annotated[
        int, typer.Option(min=-1, max=1, help="Only answers their askers rated at least this "
                          "(-1, 0 or 1).")
    ] = 1,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file. Default: standard output.",
                     show_default=False),
    ] = None,
    db_url: DbUrlOption = None,
) -> None:
    """Rated answers as chat-format JSONL: one {"messages": [question, answer], ...} a line.

    Each line also carries the question and conversation ids, the answer's
    mode, model, feedback and citations. Includes every user's questions:
    treat the file as the private data it is.
    """
    from worker.usage import count_training_examples, training_examples

    with connect(resolve_db_url(db_url)) as conn:
        total = count_training_examples(conn, min_feedback=min_feedback)
        out = output.open("w", encoding="utf-8") if output else sys.stdout
        written = 0
        try:
            with Progress(console=err_console, transient=True) as progress:
                task = progress.add_task("Exporting rated answers", total=total)
                for example in training_examples(conn, min_feedback=min_feedback):
                    out.write(json.dumps(example, ensure_ascii=False) + "\n")
                    written += 1
                    progress.advance(task)
        finally:
            if output:
                out.close()
    err_console.print(f"Exported {written} answers rated >= {min_feedback}"
                      + (f" to {output}" if output else "") + ".")
