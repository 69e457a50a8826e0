"""`suparag spaces`: embedding spaces, a model change with no downtime (issue 10)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, print_json, resolve_db_url
from worker import spaces as spaces_mod
from worker.db import connect

app = typer.Typer(help="Embedding spaces: add a model, fill it in the background, switch to it.")

NameArgument = Annotated[str, typer.Argument(help="The space's name (see `suparag spaces list`).",
                                             show_default=False)]


def _row(cover: spaces_mod.Coverage) -> dict[str, Any]:
    space = cover.space
    return {"name": space.name, "provider": space.provider, "model": space.model,
            "dimensions": space.dimensions, "state": space.state, "storage": space.storage,
            "chunks": cover.chunks, "vectors": cover.vectors, "missing": cover.missing,
            "coverage": round(cover.percent, 2),
            "index": _index(cover),
            "rate_per_s": round(cover.rate, 2),
            "eta_s": None if cover.eta_s is None else round(cover.eta_s, 1),
            "failures": cover.failures, "last_error": cover.last_error}


def _index(cover: spaces_mod.Coverage) -> str:
    if cover.space.state == "dropped":
        return "dropped"
    return f"hnsw {cover.space.index_type}" if cover.index_ready else "building or invalid"


def _eta(cover: spaces_mod.Coverage) -> str:
    if not cover.missing:
        return "full"
    if cover.eta_s is None:
        return "not moving (is a worker running?)"
    minutes, seconds = divmod(int(cover.eta_s + 0.5), 60)
    return f"ETA {minutes}m{seconds:02d}s" if minutes else f"ETA {seconds}s"


def _line(cover: spaces_mod.Coverage) -> str:
    if cover.space.state == "dropped":
        left = f", {cover.vectors} vectors still to null" if cover.vectors else ""
        return (f"{escape(cover.space.name)}: dropped{left} (its row is kept so the column "
                "is never reused)")
    failed = ""
    if cover.failures:
        failed = f", {cover.failures} failures (last: {escape(cover.last_error or '-')})"
    return (f"{escape(cover.space.name)}: {cover.percent:.1f}% ({cover.vectors}/{cover.chunks} "
            f"chunks, {cover.missing} to go), {cover.rate:.2f} vectors/s over the last minute,"
            f" {_eta(cover)}{failed}")


@app.command("list")
def list_(db_url: DbUrlOption = None, json_out: JsonOption = False) -> None:
    """Every space: model, dimensions, state, coverage and index."""
    with connect(resolve_db_url(db_url)) as conn:
        rows = [_row(c) for c in spaces_mod.coverage(conn)]
    if json_out:
        print_json(rows)
        return
    table = Table(title="Embedding spaces")
    for column in ("name", "model", "dimensions", "state", "coverage", "index"):
        table.add_column(column, justify="right" if column in ("dimensions", "coverage")
                         else "left")
    for row in rows:
        table.add_row(escape(row["name"]), escape(row["model"]), str(row["dimensions"]),
                      row["state"], f"{row['coverage']:.1f}%", row["index"])
    console.print(table)


@app.command()
def add(
    model: Annotated[str, typer.Argument(
        help="The model: a sentence-transformers name or path, or openai/<model>.",
        show_default=False)],
    dimensions: Annotated[int | None, typer.Option(
        help="Vector width (OpenAI text-embedding-3-* shorten to it). Default: the model's.",
        show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        help="The space's name. Default: the model's, with the width when given.",
        show_default=False)] = None,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Add a space and build its index; running workers then fill it in the background.

    Search stays on the active space until `suparag spaces activate NAME`.
    """
    with connect(resolve_db_url(db_url), autocommit=True) as conn, \
            console.status("Building the space's HNSW index (reads and writes go on)..."):
        space = spaces_mod.add_space(conn, model, dimensions=dimensions, name=name)
    if json_out:
        print_json({"name": space.name, "model": space.model, "dimensions": space.dimensions,
                    "state": space.state})
        return
    console.print(f"Added space {escape(space.name)} ({escape(space.model)}, "
                  f"{space.dimensions} dimensions). Running workers fill it now; follow with "
                  f"`suparag spaces status {escape(space.name)}`.")


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="A space (default: every space).",
                                               show_default=False)] = None,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
    once: Annotated[bool, typer.Option(
        "--once", help="Print the figures once instead of a live progress bar.")] = False,
) -> None:
    """Coverage, backlog, rate, ETA and failures of each space (or NAME).

    Without --json or --once: a live progress bar per space until every one
    shown is full (Ctrl-C stops watching; the backfill goes on).
    """
    with connect(resolve_db_url(db_url)) as conn:
        chosen = [spaces_mod.get_space(conn, name)] if name else None
        covers = spaces_mod.coverage(conn, chosen)
        conn.commit()
        if json_out:
            print_json([_row(c) for c in covers])
            return
        if once or not console.is_terminal or not any(c.missing for c in covers):
            for cover in covers:
                console.print(_line(cover), highlight=False)
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                      TextColumn("{task.completed}/{task.total} chunks"),
                      TextColumn("{task.fields[rate]}"), console=console) as progress:
            tasks = [progress.add_task(escape(c.space.name), total=c.chunks,
                                       completed=c.vectors, rate=_eta(c)) for c in covers]
            while any(c.missing for c in covers):
                time.sleep(1.0)
                covers = spaces_mod.coverage(conn, chosen)
                conn.commit()
                for task, cover in zip(tasks, covers, strict=True):
                    progress.update(task, total=cover.chunks, completed=cover.vectors,
                                    rate=f"{cover.rate:.1f}/s, {_eta(cover)}")
        for cover in covers:
            console.print(_line(cover), highlight=False)


@app.command()
def activate(
    name: NameArgument,
    force: Annotated[bool, typer.Option(
        help="Activate below 100% coverage (chunks without a vector are not found).")] = False,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Switch search to a space, in one transaction (refused below 100% coverage).

    The old space stays current, so `suparag spaces activate OLD` rolls back.
    """
    with connect(resolve_db_url(db_url)) as conn:
        space = spaces_mod.activate(conn, name, force=force)
    if json_out:
        print_json({"active": space.name})
        return
    console.print(f"Search now uses {escape(space.name)}. Queries must be embedded with "
                  f"{escape(space.model)} ({space.dimensions} dimensions).")


@app.command()
def drop(name: NameArgument, db_url: DbUrlOption = None, json_out: JsonOption = False) -> None:
    """Remove a space that is not active: its index and its vectors.

    The first space (document_chunks.embedding) is emptied 1,000 chunks a
    transaction, with a progress bar; its row stays, as `dropped`. If that is
    cut short, run the same command again to finish it.
    """
    with connect(resolve_db_url(db_url), autocommit=True) as conn:
        if json_out or not console.is_terminal:
            space = spaces_mod.drop_space(conn, name)
        else:
            with Progress(TextColumn("Nulling the column's vectors"), BarColumn(),
                          TaskProgressColumn(), TextColumn("{task.completed}/{task.total}"),
                          console=console, transient=True) as bar:
                task = bar.add_task("null", total=None)
                space = spaces_mod.drop_space(
                    conn, name, progress=lambda done, total: bar.update(
                        task, completed=done, total=total))
    if json_out:
        print_json({"dropped": space.name, "storage": space.storage})
        return
    if space.storage == "column":
        console.print(f"Dropped space {escape(space.name)}: its index and its vectors in "
                      "document_chunks.embedding; the row stays, marked dropped.")
        return
    console.print(f"Dropped space {escape(space.name)}, its vectors and its index.")
