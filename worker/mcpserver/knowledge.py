"""What the MCP tools do, as one caller: search, ask, read a document, all under their RLS.

Everything here takes the caller's verified JWT claims and runs its reads
inside `as_request`, so the database decides what comes back exactly as for a
PostgREST call with that token. The connection's own role (the database URL's
user) is used for two things only, as `suparag search` and `suparag ask` use
it: reading which embedding models the corpus holds (model names, not rows),
and claiming the caller's own question from the answer queue, which users may
not touch (the answer is still retrieved as the caller).

Each input has a limit (MCP clients are driven by models that can send
anything): `MAX_QUERY_CHARS`, `MAX_QUESTION_CHARS`, `MAX_LIMIT`, `MAX_FILTER_KEYS`
and `MAX_FILTER_CHARS`. Breaking one is `BadInput` with the limit in the message.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired

from typing_extensions import TypedDict

from worker import search as search_mod
from worker.asking import ask as ask_as
from worker.db import as_request, connect
from worker.errors import AnswerFailed, BadInput, NotFound
from worker.models.base import LLM, Embedder
from worker.users import User

MAX_QUERY_CHARS = 2_000
MAX_QUESTION_CHARS = 4_000
MAX_LIMIT = 20
MAX_FILTER_KEYS = 16
MAX_FILTER_CHARS = 4_000
#: get_document returns at most this much content (the rest is cut, and says so).
MAX_DOCUMENT_CHARS = 100_000


# What the tools return: their output schemas. (typing_extensions' TypedDict: pydantic,
# which the SDK builds the schemas with, needs it before Python 3.12.)


class Passage(TypedDict):
    """One passage a search returned."""

    rank: int
    title: str
    passage: str
    similarity: NotRequired[float]  # semantic search: cosine similarity
    score: NotRequired[float]  # hybrid search: reciprocal rank fusion score
    document_id: str
    chunk_id: int
    chunk_index: int
    metadata: dict[str, Any]
    page: NotRequired[Any]
    source: NotRequired[Any]


class SearchResults(TypedDict):
    results: list[Passage]


class Answer(TypedDict):
    """An answer as the asker reads it (citations as the answer worker wrote them)."""

    answer: str
    status: str
    error: str | None
    citations: list[dict[str, Any]]
    mode: str | None
    model: str | None
    question_id: str
    conversation_id: str


class Document(TypedDict):
    document_id: str
    title: str
    content: str
    truncated: bool
    characters: int
    metadata: dict[str, Any]
    visibility: str
    team: str | None
    source: str | None
    embedding_status: str
    created_at: str
    updated_at: str


_DOCUMENT = """
    select id, title, content, metadata, visibility, team, source, embedding_status,
           created_at, updated_at
    from public.documents where id = %s
"""


def check_text(text: str, *, what: str, limit: int) -> str:
    """text, refused when empty or longer than limit."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput(f"the {what} is empty: say what to look for in plain words")
    if len(text) > limit:
        raise BadInput(f"the {what} is {len(text)} characters; the limit is {limit}: "
                       "shorten it")
    return text


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise BadInput(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def check_filter(metadata_filter: Mapping[str, Any] | None) -> dict[str, Any]:
    """A metadata filter (documents whose metadata contains it), within the limits."""
    if metadata_filter is None:
        return {}
    if not isinstance(metadata_filter, Mapping):
        raise BadInput('filter must be an object of metadata keys and values, e.g. '
                       '{"topic": "geology"}')
    if len(metadata_filter) > MAX_FILTER_KEYS:
        raise BadInput(f"filter has {len(metadata_filter)} keys; the limit is "
                       f"{MAX_FILTER_KEYS}: drop some")
    size = len(json.dumps(metadata_filter, default=str))
    if size > MAX_FILTER_CHARS:
        raise BadInput(f"filter is {size} characters as JSON; the limit is "
                       f"{MAX_FILTER_CHARS}: drop some keys")
    return dict(metadata_filter)


def document_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadInput(f"{value[:80]!r} is not a document id: use the document_id a search "
                       "returned") from None


def _not_found(value: Any) -> NotFound:
    # One message whether the row is missing or RLS hides it: telling them apart
    # would tell the caller that a document they may not read exists.
    return NotFound(f"no document {value}: it does not exist or you may not read it; "
                    "search_knowledge_base lists what you can read")


class _ClaimsUser(User):
    """A user whose claims are the verified token's own, passed on unchanged (so
    `worker.asking` inserts the question and reads the answer as exactly that token)."""

    _token_claims: dict[str, Any]

    def __init__(self, claims: Mapping[str, Any]) -> None:
        super().__init__(id=uuid.UUID(str(claims["sub"])), email=str(claims.get("email") or ""),
                         app_metadata=dict(claims.get("app_metadata") or {}),
                         user_metadata=dict(claims.get("user_metadata") or {}))
        object.__setattr__(self, "_token_claims", dict(claims))

    def claims(self) -> dict[str, Any]:
        return dict(self._token_claims)


@dataclass
class KnowledgeBase:
    """The database, the models and the answering settings the tools share.

    `configured_model` picks the corpus's model when it holds several (as
    SUPARAG_EMBEDDING_MODEL does for `suparag search`); `answer_timeout` is how
    long `ask` waits for a running worker that claimed the question first.
    """

    db_url: str
    configured_model: str | None = None
    llm: LLM | None = None
    answer_timeout: float = 120.0
    _embedders: dict[str, Embedder] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def embedder(self, model: str) -> Embedder:
        """The query embedder for model, loaded once."""
        with self._lock:
            if model not in self._embedders:
                self._embedders[model] = search_mod.query_embedder(model)
            return self._embedders[model]

    def search(self, claims: Mapping[str, Any], query: str, *, limit: int = 5,
               metadata_filter: Mapping[str, Any] | None = None,
               hybrid: bool = False) -> list[Passage]:
        """The passages the caller may read that best match query, best first."""
        check_text(query, what="query", limit=MAX_QUERY_CHARS)
        check_limit(limit)
        wanted = check_filter(metadata_filter)
        with connect(self.db_url) as conn:
            model = search_mod.choose_model(conn, configured=self.configured_model)
            embedder = self.embedder(model)
            rows = search_mod.retrieve(
                conn, embedder.embed([query])[0], claims=claims, model=model, k=limit,
                metadata_filter=wanted, hybrid_text=query if hybrid else None)
        return [_passage(rank, row, hybrid=hybrid) for rank, row in enumerate(rows, start=1)]

    def ask(self, claims: Mapping[str, Any], question: str, *,
            conversation: str | None = None, limit: int = 5) -> Answer:
        """Ask through the answer queue as the caller; the answer and its citations.

        An answer still being written after `answer_timeout` comes back with its
        status (`queued`, or `streaming` with the text so far) and question_id; a failed
        one is AnswerFailed.
        """
        check_text(question, what="question", limit=MAX_QUESTION_CHARS)
        check_limit(limit)
        conversation_id = None
        if conversation is not None:
            try:
                conversation_id = uuid.UUID(str(conversation))
            except ValueError:
                raise BadInput(f"conversation {str(conversation)[:80]!r} is not an id: use "
                               "the conversation_id an earlier ask returned") from None
        with connect(self.db_url) as conn:
            model = search_mod.choose_model(conn, configured=self.configured_model)
            asked = ask_as(conn, self.db_url, self.embedder(model), _ClaimsUser(claims),
                           question, llm=self.llm, conversation_id=conversation_id, k=limit,
                           timeout=self.answer_timeout)
        answer = asked.answer or {}
        if answer.get("status") == "failed":
            raise AnswerFailed(f"question {asked.question_id} was not answered: "
                               f"{answer.get('error')}. It is retried with backoff: ask again "
                               "later")
        return {
            "answer": answer.get("content", ""),
            "status": answer.get("status", "queued"),
            "error": answer.get("error"),
            "citations": answer.get("citations") or [],
            "mode": answer.get("mode"),
            "model": answer.get("model"),
            "question_id": str(asked.question_id),
            "conversation_id": str(asked.conversation_id),
        }

    def get_document(self, claims: Mapping[str, Any], value: str) -> Document:
        """One document the caller may read, or NotFound (also when RLS hides it)."""
        doc_id = document_id(value)
        with connect(self.db_url) as conn, as_request(conn, claims):
            row = conn.execute(_DOCUMENT, (doc_id,)).fetchone()
        if row is None:
            raise _not_found(doc_id)
        content: str = row["content"]
        return {
            "document_id": str(row["id"]),
            "title": row["title"],
            "content": content[:MAX_DOCUMENT_CHARS],
            "truncated": len(content) > MAX_DOCUMENT_CHARS,
            "characters": len(content),
            "metadata": row["metadata"],
            "visibility": row["visibility"],
            "team": row["team"],
            "source": row["source"],
            "embedding_status": row["embedding_status"],
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(),
        }


def _passage(rank: int, row: Mapping[str, Any], *, hybrid: bool) -> Passage:
    metadata = row["metadata"] or {}
    passage = Passage(rank=rank, title=row["title"], passage=row["content"],
                      document_id=str(row["document_id"]), chunk_id=row["chunk_id"],
                      chunk_index=row["chunk_index"], metadata=metadata)
    # A hybrid score is a fused rank, not a similarity: named for what it is.
    if hybrid:
        passage["score"] = round(float(row["score"]), 6)
    else:
        passage["similarity"] = round(float(row["score"]), 6)
    # Citation fields ingest may have recorded (issue 15's page numbers, the file).
    if "page" in metadata:
        passage["page"] = metadata["page"]
    if "source" in metadata:
        passage["source"] = metadata["source"]
    return passage
