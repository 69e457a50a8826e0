"""`suparag ask`: ask a question as a user and print the answer with its citations."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli._common import DbUrlOption, JsonOption, console, err_console, print_json, resolve_db_url
from worker import search as search_mod
from worker.db import connect
from worker.errors import AnswerFailed, ConfigError
from worker.users import find_user


def ask(
    question: Annotated[str, typer.Argument(help="The question, in plain words.")],
    as_user: Annotated[
        str,
        typer.Option("--as", help="Ask as this user (email or id). The answer uses only "
                     "documents this user may read.", show_default=False),
    ],
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", help="Continue this conversation (the id an earlier "
                     "answer printed): its earlier turns are context.", show_default=False),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=20,
                                   help="How many passages to retrieve.")] = 5,
    filters: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Only documents whose metadata has key=value "
                     "(repeatable).", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Whose vectors to search when the corpus holds several models.",
                     show_default=False),
    ] = None,
    timeout: Annotated[float, typer.Option(
        help="Seconds to wait for a running `suparag worker` to finish the answer.")] = 300.0,
    db_url: DbUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Ask a question as a user; the answer cites only documents they may read.

    The question is inserted into public.questions as the user (as the API
    would), then answered in this process: retrieval runs as the user, and
    with SUPARAG_LLM_MODEL set a chat model writes the answer, streamed here;
    without it the answer quotes the best passages. If a running `suparag
    worker` claims the question first, this waits for its answer instead.
    """
    from worker.asking import ask as ask_as
    from worker.models.factory import llm_from_settings
    from worker.settings import get_settings

    search_mod.check_query(question, what="question")
    conversation_id = _conversation_id(conversation)
    metadata_filter = search_mod.parse_filter(filters or [])
    url = resolve_db_url(db_url)
    with connect(url) as conn:
        with conn.transaction():
            user = find_user(conn, as_user)
        chosen = search_mod.choose_model(conn, requested=model,
                                         configured=search_mod.configured_model())
        llm = llm_from_settings(get_settings())
        printer = _Printer(enabled=not json_out)
        with printer.status(f"Retrieving as {user.email} and answering..."):
            asked = ask_as(conn, url, search_mod.query_embedder(chosen), user, question,
                           llm=llm, conversation_id=conversation_id,
                           metadata_filter=metadata_filter, k=k, on_text=printer.text,
                           timeout=timeout)
    answer = asked.answer
    if answer is None or answer["status"] != "done":
        error = answer["error"] if answer else "no answer yet"
        raise AnswerFailed(
            f"question {asked.question_id} was not answered: {error}. It stays queued and is "
            "retried with backoff: run `suparag worker` (or ask again)")
    if json_out:
        content = answer.pop("content")
        print_json({"question_id": asked.question_id,
                    "conversation_id": asked.conversation_id, **answer, "answer": content})
        return
    printer.end()
    _print_citations(answer["citations"])
    console.print(f"[dim]conversation {asked.conversation_id} (continue with "
                  f"--conversation {asked.conversation_id})[/dim]")


def _conversation_id(value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ConfigError(f"--conversation {value!r} is not an id: use the conversation id an "
                          "earlier `suparag ask` printed") from None


class _Printer:
    """Streams answer text to stdout; a spinner on stderr until the first text."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._status: Any = None
        self._printed = 0

    def status(self, message: str) -> Any:
        self._status = err_console.status(message)
        return self._status

    def text(self, delta: str) -> None:
        if not self.enabled:
            return
        if self._status is not None:
            self._status.stop()
        sys.stdout.write(delta)
        sys.stdout.flush()
        self._printed += len(delta)

    def end(self) -> None:
        if self.enabled and self._printed:
            sys.stdout.write("\n\n")
            sys.stdout.flush()


def _print_citations(citations: list[dict[str, Any]]) -> None:
    if not citations:
        return
    table = Table(title="Citations")
    table.add_column("#", justify="right")
    table.add_column("title")
    table.add_column("similarity", justify="right")
    table.add_column("document", no_wrap=True)
    table.add_column("chunk", justify="right")
    for c in citations:
        table.add_row(str(c["n"]), escape(cited_as(c)), f"{c['similarity']:.4f}",
                      c["document_id"], str(c["chunk_id"]))
    console.print(table)


def cited_as(citation: dict[str, Any]) -> str:
    """A citation as a reader names it: the title, and the page for a PDF (slide for a deck),
    e.g. "policy.pdf, p. 12"."""
    page = citation.get("page")  # absent in answers written before pages (issue 15)
    return citation["title"] if page is None else f"{citation['title']}, p. {page}"
