"""`suparag demo`: the whole pipeline on the local stack, in one command."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli._common import console, err_console
from worker import demo as demo_mod
from worker.asking import ask
from worker.db import connect
from worker.devstack import stack
from worker.errors import DemoFailed
from worker.jobs.embedding import EmbeddingWorker
from worker.models.factory import embedder_from_settings
from worker.search import search
from worker.settings import get_settings


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=False)


def demo(
    k: Annotated[int, typer.Option("-k", min=1, max=20, help="Results per search.")] = 3,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for documents another worker is embedding.")
    ] = 120.0,
) -> None:
    """Start the local stack, load a sample corpus, embed it, search and ask as each user.

    Three users in two teams (alice and carol: red; bob: blue) and nine sample
    documents, private, team and public. Each user's searches and document
    list come back from the database under Row Level Security; then carol
    and bob each ask a question, answered (extractively) from what each may
    read. The demo checks all of it against the sharing rules and fails if
    anything differs. Running it again reuses everything: unchanged
    documents are not re-embedded.
    """
    settings = get_settings()
    with console.status("Starting the local database…", spinner="dots"):
        started = stack.start(settings)
    console.print(f"[bold]1. Local stack[/bold]: PostgreSQL + pgvector at {started.server.url}"
                  f" ({'reused' if started.reused else 'started'}, data in {settings.home})")

    with connect(started.server.url) as conn:
        with _progress() as progress:
            task = progress.add_task("Ingesting sample corpus", total=demo_mod.corpus_files())
            users, report = demo_mod.seed(conn, on_file=lambda _: progress.advance(task))
        console.print(
            f"[bold]2. Ingested[/bold] {report.files} files for "
            f"{', '.join(users)}: {report.count('created')} created, "
            f"{report.count('updated')} updated, {report.count('unchanged')} unchanged, "
            f"{report.queued} queued for embedding."
        )

        docs = demo_mod.demo_documents(conn)
        ids = [d.id for d in docs]
        embedder = embedder_from_settings(settings)
        with _progress() as progress:
            task = progress.add_task(f"Embedding with {embedder.name}", total=len(ids),
                                     completed=len(ids) - demo_mod.pending(conn, ids))
            worker = EmbeddingWorker(started.server.url, embedder)
            try:
                worker.drain(on_batch=lambda _: progress.update(
                    task, completed=len(ids) - demo_mod.pending(conn, ids)))
            finally:
                worker.close()
            # A `suparag worker` running alongside may hold some of the jobs.
            deadline = time.monotonic() + timeout
            while (left := demo_mod.pending(conn, ids)) and time.monotonic() < deadline:
                progress.update(task, completed=len(ids) - left)
                time.sleep(0.2)
            progress.update(task, completed=len(ids) - left)
        if left:
            raise DemoFailed(f"{left} documents are not embedded yet: see `suparag status` "
                             "and `suparag jobs failed`")
        console.print(f"[bold]3. Embedded[/bold] all {len(ids)} documents.")

        by_id = {d.id: d for d in docs}
        callers = {"anon": None, **{email.split("@")[0]: user for email, user in users.items()}}
        console.print("\n[bold]4. Search as each user[/bold] (RLS decides what comes back)")
        for query in demo_mod.QUERIES:
            table = Table(title=f"“{query}”", title_justify="left", expand=True)
            table.add_column("as", style="bold")
            table.add_column(f"top {k} (owner · visibility · similarity)")
            for name, user in callers.items():
                hits = search(conn, embedder, query, claims=user.claims() if user else None,
                              k=k)
                lines = [
                    f"{h.title} [dim]({by_id[h.document_id].owner.split('@')[0]} · "
                    f"{by_id[h.document_id].visibility} · {h.score:.2f})[/dim]"
                    for h in hits
                ]
                table.add_row(name, "\n".join(lines) or "[dim]nothing readable[/dim]")
            console.print(table)

        console.print("[bold]5. Who reads what[/bold] (database under RLS vs the sharing rules)")
        check = Table(expand=True)
        check.add_column("as", style="bold")
        check.add_column("documents the database returns")
        check.add_column("matches rules")
        mismatches = []
        for name, user in callers.items():
            got = demo_mod.readable(conn, user)
            expected = {d.id for d in docs if demo_mod.may_read(user, d)}
            titles = sorted(by_id[i].title for i in got)
            ok = got == expected
            if not ok:
                mismatches.append(name)
            check.add_row(name, f"{len(got)} of {len(docs)}: " + "; ".join(titles),
                          "[green]yes[/green]" if ok else "[red]NO[/red]")
        console.print(check)

        console.print(f"[bold]6. Ask[/bold] “{demo_mod.QUESTION}” (answered from what the "
                      "asker may read; extractive: quoted passages, no chat model)")
        answers = Table(expand=True)
        answers.add_column("asker", style="bold")
        answers.add_column("cites (owner · visibility)")
        answers.add_column("all readable by the asker")
        for name in ("carol", "bob"):
            user = callers[name]
            assert user is not None
            asked = ask(conn, started.server.url, embedder, user, demo_mod.QUESTION,
                        timeout=timeout)
            if asked.answer is None or not asked.done:
                error = asked.answer["error"] if asked.answer else \
                    f"no answer within {timeout:.0f} s"
                raise DemoFailed(f"the question asked as {name} was not answered: {error}")
            cited = [by_id.get(uuid.UUID(c["document_id"])) for c in asked.answer["citations"]]
            ok = all(d is not None and demo_mod.may_read(user, d) for d in cited)
            if not ok:
                mismatches.append(f"{name}'s answer")
            answers.add_row(name, "\n".join(
                f"{d.title} [dim]({d.owner.split('@')[0]} · {d.visibility})[/dim]"
                if d is not None else "[red]a document outside the demo[/red]" for d in cited
            ) or "[dim]nothing readable matched[/dim]",
                "[green]yes[/green]" if ok else "[red]NO[/red]")
        console.print(answers)
    if mismatches:
        raise DemoFailed(f"RLS returned other rows than the sharing rules for: "
                         f"{', '.join(mismatches)}")
    console.print(
        "Everything above ran on the local stack. Next: `suparag search \"your question\" "
        "--as alice@example.com`, `suparag ask \"your question\" --as carol@example.com`, "
        "`suparag ingest PATH --owner EMAIL`, `suparag dev` (API and workers)."
    )
