"""`suparag search`: search the documents as a user, under their RLS."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, err_console, print_json, resolve_db_url
from worker import search as search_mod
from worker.db import connect
from worker.devstack.query_embed import running_api_embedder
from worker.settings import get_settings
from worker.users import find_user

SNIPPET_CHARS = 160


def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    as_user: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Search as this user (email or id): RLS returns only what they may read. "
            "Default: anonymous, which reads public documents only.",
            show_default=False,
        ),
    ] = None,
    hybrid: Annotated[
        bool,
        typer.Option("--hybrid", help="Fuse full-text and semantic rankings (reciprocal rank "
                     "fusion): better for exact words, names and codes."),
    ] = False,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="How many chunks to return.")] = 5,
    threshold: Annotated[
        float | None,
        typer.Option(min=-1.0, max=1.0, help="Only chunks at least this similar (cosine, -1..1); "
                     "semantic search only.", show_default=False),
    ] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Only documents whose metadata has key=value (repeatable); "
                     "the value is read as JSON when it parses (2024, true), else as text.",
                     show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Whose vectors to search when the corpus holds several models. "
                     "Default: the only one, else SUPARAG_EMBEDDING_MODEL.", show_default=False),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(help="The embedding space to search (see `suparag spaces list`). "
                     "Default: the active one.", show_default=False),
    ] = None,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Search the documents as a user, under their RLS.

    The query is embedded with the model that embedded the documents, then
    `public.match_documents` (or `public.hybrid_search`) runs with the user's
    JWT claims, so the results are exactly what that user may read.
    """
    search_mod.check_query(query)
    search_mod.check_options(hybrid=hybrid, threshold=threshold)
    metadata_filter = search_mod.parse_filter(filters or [])
    with connect(resolve_db_url(db_url)) as conn:
        with conn.transaction():
            user = find_user(conn, as_user) if as_user else None
        chosen_embedder = search_mod.choose_embedder(conn, space=space, requested=model,
                                                     configured=search_mod.configured_model())
        chosen = chosen_embedder.name
        # A running `suparag dev` API already holds the model (issue 16: no torch here).
        embedder = running_api_embedder(get_settings(), chosen,
                                        fallback=lambda: chosen_embedder)
        with err_console.status(f"Embedding the query with {chosen} and searching..."):
            hits = search_mod.search(
                conn, embedder, query, claims=user.claims() if user else None, k=k,
                hybrid=hybrid, threshold=threshold, metadata_filter=metadata_filter,
                space=space,
            )
    score_name = "score" if hybrid else "similarity"
    if json_out:
        print_json([_hit_json(hit, score_name) for hit in hits])
        return
    who = user.email if user else "anonymous"
    if not hits:
        hint = "" if user else " (anonymous sees public documents only: try --as USER)"
        console.print(f"No results as {who}{hint}.")
        return
    table = Table(title=f"{'Hybrid' if hybrid else 'Semantic'} search as {escape(who)} "
                  f"({escape(chosen)})")
    table.add_column("#", justify="right")
    table.add_column(score_name, justify="right")
    table.add_column("title")
    table.add_column("snippet", ratio=1)
    table.add_column("document", no_wrap=True)
    for hit in hits:
        table.add_row(str(hit.rank), f"{hit.score:.4f}", escape(hit.title),
                      escape(_snippet(hit.content)), str(hit.document_id))
    console.print(table)


def _hit_json(hit: search_mod.Hit, score_name: str) -> dict[str, Any]:
    return {
        "rank": hit.rank,
        score_name: hit.score,
        "document_id": str(hit.document_id),
        "chunk_index": hit.chunk_index,
        "title": hit.title,
        "content": hit.content,
        "metadata": hit.metadata,
    }


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1].rstrip() + "…"
