"""`suparag ingest`: read files and folders into public.documents for one owner."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli._common import DbUrlOption, JsonOption, console, err_console, print_json, resolve_db_url
from worker import ingest as ingest_mod
from worker.db import connect


class Visibility(StrEnum):
    """Who may read the documents (the RLS rules)."""

    private = "private"
    team = "team"
    public = "public"


def ingest(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Files and folders. Folders are read recursively; names starting "
                       "with a dot are left out.", metavar="PATH", show_default=False),
    ],
    owner: Annotated[
        str,
        typer.Option(metavar="USER", help="Email or id of the user who owns the documents "
                     "(`suparag users add EMAIL` creates one).", show_default=False),
    ],
    team: Annotated[
        str | None,
        typer.Option(help="Team of the documents. Default: the owner's team; '' for none.",
                     show_default=False),
    ] = None,
    visibility: Annotated[
        Visibility,
        typer.Option(help="private: the owner only; team: the owner and the team; "
                     "public: everyone, anonymous callers too."),
    ] = Visibility.private,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", "-m", metavar="KEY=VALUE",
                     help="Added to every document's metadata (repeatable). The value is JSON "
                     "when it parses (2024, true), else text, as in `search --filter`.",
                     show_default=False),
    ] = None,
    encoding: Annotated[
        str,
        typer.Option(help="How to read files that are not UTF-8 (a Python codec name). Each "
                     "such file is reported, and the encoding kept in its metadata."),
    ] = ingest_mod.DEFAULT_FALLBACK_ENCODING,
    max_size: Annotated[
        float,
        typer.Option(min=0.001, help="Skip (and report) files larger than this many MB."),
    ] = ingest_mod.DEFAULT_MAX_BYTES / 2**20,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Read markdown, text, rst, HTML, JSON, JSONL, PDF, Word, PowerPoint, Excel and EPUB
    files into documents.

    Each document is named by its source: the file's path relative to the
    folder holding the argument (`suparag ingest docs` names docs/a/b.md
    `docs/a/b.md`), or `file#id=ID` / `file#line=N` / `file#item=N` for one
    record of a JSON or JSONL file. Ingesting again updates documents by
    (owner, source): unchanged ones are left alone and queue no embedding;
    changed ones are updated and queued. Documents of deleted files are kept.

    Markdown and .txt titles come from the first heading (or front matter
    `title:`), rst from the first underlined line, HTML from <title> or <h1>,
    else the file name. A JSON object with "content" (or "text"), or an array
    of them, or one per JSONL line, makes one document each, with "title" and
    "metadata" (other keys join the metadata too); other JSON is stored
    pretty-printed. Files with other extensions are read as plain text when
    they are text.

    PDFs are read page by page (each chunk keeps its page for citations);
    .docx, .pptx, .xlsx and .epub become markdown. Scanned PDFs without text,
    encrypted or corrupt files and password-protected Office files are
    skipped with the reason.

    Reported and skipped: binary files (a NUL byte in the first 8 KB, or not
    decodable), unreadable files, bad JSON records (the rest of the file is
    kept). Empty text files become empty documents; NULs further in are
    removed (PostgreSQL text cannot hold them). Documents are committed 50 at a
    time, so an interrupted run keeps what it wrote.
    """
    fallback = ingest_mod.check_encoding(encoding)
    found = ingest_mod.discover(paths)
    with connect(resolve_db_url(db_url)) as conn:
        target = ingest_mod.make_target(conn, owner=owner, team=team,
                                        visibility=visibility.value, metadata=metadata or [])
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[current]}"),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("Ingesting", total=len(found.files), current="")

            def advance(file: ingest_mod.SourceFile) -> None:
                progress.update(task, advance=1, current=escape(file.source))

            def within(file: ingest_mod.SourceFile, done: int, total: int) -> None:
                # A long PDF shows its pages going by (issue 15).
                if total > 1:
                    progress.update(task, current=f"{escape(file.source)} p. {done}/{total}")

            report = ingest_mod.ingest(conn, found, target, fallback_encoding=fallback,
                                       max_bytes=int(max_size * 2**20), on_file=advance,
                                       on_progress=within)
    if json_out:
        print_json({"owner": target.owner.email, "team": target.team,
                    "visibility": target.visibility, **report.as_json()})
        return
    _print_summary(report, target)


def _print_summary(report: ingest_mod.IngestReport, target: ingest_mod.Target) -> None:
    sharing = f"team {target.team}, {target.visibility}" if target.team else target.visibility
    console.print(
        f"Read {report.files} files for {escape(target.owner.email)} ({escape(sharing)}): "
        f"[green]{report.count('created')} created[/green], "
        f"{report.count('updated')} updated, {report.count('unchanged')} unchanged, "
        f"[yellow]{len(report.skipped)} skipped[/yellow]."
    )
    for skipped in report.skipped:
        console.print(f"  [yellow]skipped[/yellow] {escape(skipped.source)}: "
                      f"{escape(skipped.reason)}")
    for note in report.notes:
        console.print(f"  [cyan]note[/cyan]    {escape(note.source)}: {escape(note.message)}")
    if report.queued:
        console.print(f"{report.queued} documents queued for embedding: "
                      "`suparag worker` embeds them.")
    else:
        console.print("Nothing queued for embedding: no new or changed text.")
