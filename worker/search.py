"""Search as a user: embed the query with the corpus's model, then ask the database as them.

The search itself is `public.match_documents` / `public.hybrid_search`, run
inside `as_request`, so RLS decides what comes back exactly as it would for a
PostgREST call with that user's JWT. The query must be embedded by the model
that embedded the corpus, and that model's name goes to the SQL function, so
vectors of different models are never compared. Which models exist is read on
the service connection: it is only model names, and choosing by what the
caller can read would tell them something about rows they cannot.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.db import as_request, ensure_vector_types, to_vector
from worker.documents import parse_pairs
from worker.errors import ConfigError, NotFound
from worker.models.base import Embedder
from worker.models.factory import embedder_for_model, embedder_from_settings
from worker.settings import Settings, get_settings
from worker.spaces import get_space, space_embedder
from worker.status import models_in_use


@dataclass(frozen=True)
class Hit:
    """One chunk a search returned.

    `score` is the cosine similarity for a semantic search and the reciprocal
    rank fusion score for a hybrid one.
    """

    rank: int
    document_id: uuid.UUID
    chunk_index: int
    title: str
    content: str
    metadata: dict[str, Any]
    score: float


@dataclass(frozen=True)
class HybridWeights:
    """hybrid_search's fusion setting: score = sum(weight / (rrf_k + rank)) over the two
    rankings. None for a search means the function's own defaults."""

    full_text_weight: float
    semantic_weight: float
    rrf_k: int


_HIT_FIELDS = ("document_id", "chunk_index", "title", "content", "metadata", "score")


def query_embedder(model_name: str) -> Embedder:
    """The embedder for queries against vectors stored under model_name."""
    return embedder_for_model(model_name, get_settings())


def configured_model(settings: Settings | None = None) -> str | None:
    """The stored name of the model the configuration names, if it can be built."""
    try:
        return embedder_from_settings(settings or get_settings()).name
    except ConfigError:
        # e.g. the openai provider without a key: then it cannot be the one to
        # search with, and choose_model asks for --model instead.
        return None


def choose_model(conn: psycopg.Connection[Any], *, requested: str | None = None,
                 configured: str | None = None) -> str:
    """The model whose vectors to search: the only one, or the requested or configured one."""
    present = [usage.model for usage in models_in_use(conn)]
    if not present:
        raise NotFound(
            "nothing is embedded yet: run `suparag worker --once` to embed the queued documents"
        )
    if requested is not None:
        if requested not in present:
            raise NotFound(
                f"no vectors from model {requested!r}; the corpus has: {', '.join(present)}"
            )
        return requested
    if len(present) == 1:
        return present[0]
    if configured in present:
        return configured
    raise ConfigError(
        f"the corpus has vectors from several models ({', '.join(present)}): "
        "choose one with --model"
    )


def choose_embedder(conn: psycopg.Connection[Any], *, space: str | None = None,
                    requested: str | None = None, configured: str | None = None) -> Embedder:
    """The query embedder for a search of space (None: the active one, issue 10).

    A space added with `suparag spaces add` has one model, which embeds the
    query; the first space (document_chunks.embedding) may hold several
    models of its width, chosen as choose_model does.
    """
    with conn.transaction():
        chosen = get_space(conn, space)
    if chosen.storage == "table":
        return space_embedder(chosen)
    return query_embedder(choose_model(conn, requested=requested, configured=configured))


def parse_filter(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs as a metadata filter, read as `ingest --metadata` reads them."""
    return parse_pairs(pairs, option="filter")


def check_query(text: str, *, what: str = "query") -> None:
    """Refuse an empty or whitespace-only query or question: there is nothing to look for
    (an empty string still embeds to a vector, which would rank chunks at random)."""
    if not text.strip():
        example = ('suparag ask "How do refunds work?" --as EMAIL' if what == "question"
                   else 'suparag search "refund policy"')
        raise ConfigError(f"the {what} is empty: say what to look for, e.g. {example}")


def check_options(*, hybrid: bool, threshold: float | None) -> None:
    """Refuse a threshold on hybrid search: a fused rank has no similarity to cut at."""
    if hybrid and threshold is not None:
        raise ConfigError("--threshold applies to semantic search only: drop it or --hybrid")


# One statement per function, the same columns from both (similarity is the score
# of a semantic search).
_MATCH = """
    select document_id, chunk_id, chunk_index, title, content, metadata, similarity as score
    from public.match_documents(
      query_embedding => %(vector)s, match_count => %(k)s,
      filter => %(filter)s, match_threshold => %(threshold)s, embedding_model => %(model)s,
      space => %(space)s)
"""

_HYBRID = """
    select document_id, chunk_id, chunk_index, title, content, metadata, score
    from public.hybrid_search(
      query_text => %(query)s, query_embedding => %(vector)s,
      match_count => %(k)s, filter => %(filter)s, embedding_model => %(model)s,
      space => %(space)s{weights})
"""
_WEIGHTS = (", full_text_weight => %(full_text_weight)s, semantic_weight => %(semantic_weight)s,"
            " rrf_k => %(rrf_k)s")


def retrieve(
    conn: psycopg.Connection[Any],
    vector: Sequence[float],
    *,
    claims: Mapping[str, Any] | None,
    model: str | None,
    k: int = 5,
    metadata_filter: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    hybrid_text: str | None = None,
    weights: HybridWeights | None = None,
    space: str | None = None,
    role_settings: bool = False,
) -> list[dict[str, Any]]:
    """The rows `match_documents` (or, given hybrid_text, `hybrid_search`) returns to
    the caller (claims; None = anon), run as the caller in its own transaction.

    Each row: document_id, chunk_id, chunk_index, title, content, metadata, score.
    Only vectors stored under `model` are compared, in the embedding space
    `space` (None: the active one; see worker/spaces.py). `weights`: hybrid_search's
    fusion setting (None: its defaults). Search, the answer worker and `suparag eval`
    read through here. `role_settings`: apply the caller's role's own settings (its
    `statement_timeout`) as PostgREST does per request; for searches made on a
    caller's behalf over HTTP (the edge functions).
    """
    params: dict[str, Any] = {
        "query": hybrid_text,
        "vector": to_vector(vector),
        "k": k,
        "filter": Jsonb(dict(metadata_filter or {})),
        "threshold": threshold,
        "model": model,
        "space": space,
    }
    if weights is not None:
        params.update(full_text_weight=weights.full_text_weight,
                      semantic_weight=weights.semantic_weight, rrf_k=weights.rrf_k)
    statement = _MATCH if hybrid_text is None else _HYBRID.replace(
        "{weights}", _WEIGHTS if weights is not None else "")
    ensure_vector_types(conn)
    with as_request(conn, claims, role_settings=role_settings):
        return conn.execute(statement, params).fetchall()


def search(
    conn: psycopg.Connection[Any],
    embedder: Embedder,
    query: str,
    *,
    claims: Mapping[str, Any] | None,
    k: int = 5,
    hybrid: bool = False,
    threshold: float | None = None,
    metadata_filter: Mapping[str, Any] | None = None,
    space: str | None = None,
) -> list[Hit]:
    """The top k chunks for query among those the caller (claims; None = anon) may read.

    Only vectors made by `embedder` are compared. `metadata_filter`: documents
    whose metadata contains it. `threshold`: minimum cosine similarity
    (semantic search only).
    """
    check_query(query)
    check_options(hybrid=hybrid, threshold=threshold)
    rows = retrieve(conn, embedder.embed([query])[0], claims=claims, model=embedder.name, k=k,
                    metadata_filter=metadata_filter, threshold=threshold,
                    hybrid_text=query if hybrid else None, space=space)
    return [Hit(rank=rank, **{f: row[f] for f in _HIT_FIELDS})
            for rank, row in enumerate(rows, start=1)]
