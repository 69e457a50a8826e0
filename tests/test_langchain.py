"""LangChain's `SupabaseVectorStore` (langchain-community, from PyPI), unpatched and with
its defaults, over supabase-py against the local API (issue 12; migration 20261202010000).

LangChain calls `rpc('match_documents', {query_embedding, filter})` with PostgREST's
`limit=k` and no match_count; it reads content, metadata and similarity, and for
max_marginal_relevance_search the chunk's `embedding`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from conftest import TEMPLATE, create_database
from langchain_community.vectorstores import SupabaseVectorStore
from langchain_core.embeddings import Embeddings
from supabase import Client
from test_api_rest import Api, serve, signed_in

from worker.db import connect
from worker.jobs.embedding import EmbeddingWorker
from worker.models.base import Embedder

QUERY = "How do HNSW vector indexes answer nearest neighbour queries?"
# Three documents with one text: MMR should keep one of them, plain search all three.
DUPLICATE = "HNSW vector indexes answer nearest neighbour queries quickly."


class SuparagEmbeddings(Embeddings):
    """LangChain's Embeddings over a suparag embedder (the one that embeds the chunks)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed([text])[0]


def documents(who: str, visibility: str, n: int) -> list[dict[str, Any]]:
    kinds = ["runbook", "note"]
    return [{"title": f"{who} {visibility} {i}",
             "content": f"{who}'s {visibility} {kinds[i % 2]} {i} on vector indexes,"
                        f" HNSW graphs and recall",
             "visibility": visibility,
             "metadata": {"who": who, "visibility": visibility, "kind": kinds[i % 2]}}
            for i in range(n)]


class Corpus:
    """red (team red) and blue (team blue), each with private, team and public documents;
    three of red's public ones share one text."""

    def __init__(self, api: Api, conn: Any, embedder: Embedder) -> None:
        self.api, self.embeddings = api, SuparagEmbeddings(embedder)
        self.red = signed_in(api, conn, "rosa@example.com", team="red")
        self.blue = signed_in(api, conn, "bert@example.com", team="blue")
        self.red.table("documents").insert(
            documents("red", "private", 6) + documents("red", "team", 3)
            + documents("red", "public", 3)
            + [{"title": f"duplicate {i}", "content": DUPLICATE, "visibility": "public",
                "metadata": {"who": "red", "visibility": "public", "kind": "duplicate"}}
               for i in range(3)]).execute()
        self.blue.table("documents").insert(
            documents("blue", "private", 4) + documents("blue", "team", 4)
            + documents("blue", "public", 5)).execute()
        EmbeddingWorker(api.db_url, embedder).drain()

    def store(self, client: Client) -> SupabaseVectorStore:
        return SupabaseVectorStore(client=client, embedding=self.embeddings,
                                   table_name="documents", query_name="match_documents")


@pytest.fixture(scope="module")
def corpus(pg_server: Any, template_url: str, embedder: Embedder,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """One corpus for the module: every test only reads it."""
    db_url = create_database(pg_server, template=TEMPLATE)
    with (connect(db_url) as conn,
          contextmanager(serve)(db_url, tmp_path_factory.mktemp("home")) as api):
        yield Corpus(api, conn, embedder)


def readable(who: str | None) -> set[tuple[str, str]]:
    """(owner, visibility) pairs that who (None = anon) may read."""
    public = {("red", "public"), ("blue", "public")}
    if who is None:
        return public
    return public | {(who, "private"), (who, "team")}


def owners(docs: Sequence[Any]) -> set[tuple[str, str]]:
    return {(d.metadata["who"], d.metadata["visibility"]) for d in docs}


def test_k_above_ten_returns_k(corpus):
    store = corpus.store(corpus.red)
    found = store.similarity_search(QUERY, k=12)
    assert len(found) == 12  # was 10: match_count's old default
    assert owners(found) <= readable("red")
    # And every readable chunk when k is above them all (15 of red's, 5 of blue's).
    assert len(store.similarity_search(QUERY, k=50)) == 20


def test_rls_bounds_what_each_caller_gets(corpus):
    blue = corpus.store(corpus.blue).similarity_search(QUERY, k=50)
    assert len(blue) == 13 + 6 and owners(blue) == readable("blue")
    anon = corpus.store(corpus.api.client()).similarity_search(QUERY, k=50)
    assert len(anon) == 11 and owners(anon) == readable(None)


def test_metadata_filter(corpus):
    runbooks = corpus.store(corpus.blue).similarity_search(QUERY, k=50,
                                                           filter={"kind": "runbook"})
    # blue's 2 + 2 + 3 runbooks and red's 2 public ones
    assert len(runbooks) == 9
    assert {d.metadata["kind"] for d in runbooks} == {"runbook"}
    assert owners(runbooks) == readable("blue")


def test_relevance_scores_are_match_documents_similarities(corpus, embedder):
    scored = corpus.store(corpus.red).similarity_search_with_relevance_scores(QUERY, k=12)
    assert len(scored) == 12
    scores = [score for _, score in scored]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    # The same similarities an app gets when it passes match_count itself.
    rows = corpus.red.rpc("match_documents", {"query_embedding": embedder.embed([QUERY])[0],
                                              "match_count": 12}).execute().data
    assert scores == pytest.approx([row["similarity"] for row in rows])
    assert [doc.page_content for doc, _ in scored] == [row["content"] for row in rows]


def test_max_marginal_relevance_search(corpus):
    store = corpus.store(corpus.red)
    nearest = store.similarity_search(DUPLICATE, k=3)
    assert [d.page_content for d in nearest] == [DUPLICATE] * 3
    diverse = store.max_marginal_relevance_search(DUPLICATE, k=3, fetch_k=12,
                                                  lambda_mult=0.25)
    assert len(diverse) == 3 and owners(diverse) <= readable("red")
    assert [d.page_content for d in diverse].count(DUPLICATE) == 1


def test_rows_carry_id_and_the_vector_langchain_parses(corpus, embedder):
    """What LangChain receives: an `id` per chunk (LangChain.js reads it into Document.id;
    langchain-community 0.4 does not read it) and, without match_count, the vector."""
    vector = embedder.embed([DUPLICATE])[0]
    rows = corpus.red.rpc("match_documents", {"query_embedding": vector}).limit(12) \
        .execute().data
    assert len(rows) == 12
    assert [row["id"] for row in rows] == [row["chunk_id"] for row in rows]
    assert len({row["id"] for row in rows}) == 12
    parsed = np.fromstring(rows[0]["embedding"].strip("[]"), np.float32, sep=",")
    assert parsed.shape == (384,)
    assert float(parsed @ np.asarray(vector, np.float32)) == pytest.approx(
        rows[0]["similarity"], abs=1e-4)


def test_callers_passing_match_count_are_unchanged(corpus, embedder):
    vector = embedder.embed([QUERY])[0]
    rows = corpus.red.rpc("match_documents", {"query_embedding": vector,
                                              "match_count": 3}).execute().data
    assert len(rows) == 3 and all(row["embedding"] is None for row in rows)
    asked = corpus.red.rpc("match_documents", {"query_embedding": vector, "match_count": 3,
                                               "include_embedding": True}).execute().data
    assert [row["id"] for row in asked] == [row["id"] for row in rows]
    assert all(len(row["embedding"].strip("[]").split(",")) == 384 for row in asked)
    # hybrid_search still passes its own count to match_documents.
    hybrid = corpus.red.rpc("hybrid_search", {"query_text": "vector indexes",
                                              "query_embedding": vector,
                                              "match_count": 12}).execute().data
    assert len(hybrid) == 12
