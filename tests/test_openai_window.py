"""No silent truncation on OpenAI-compatible servers (issue 16).

A small model behind a compatible server reads far fewer tokens than the
512 estimated ones the provider used to chunk to; the server cuts the rest
without a word. The window is now configurable, known for OpenAI's models,
counted with the packaged tokenizer for a MiniLM server, and checked against
the server's usage count. The server here is the HTTP-level double of
test_openai_embedder, reporting usage as a tokenizer that counts every
character (more than the provider's estimate).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import http_double
from test_openai_embedder import KEY, FakeOpenAI, _handler, insert, make, state

from worker.errors import EmbeddingJobError
from worker.jobs.chunking import chunk_document
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.models.factory import embedder_from_settings
from worker.models.openai import OpenAIEmbedder
from worker.settings import Settings
from worker.users import add_user


@dataclass
class CharCounting(FakeOpenAI):
    """Reports usage as one token per character, the way a fine tokenizer would."""

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        status, headers, payload = super().answer(body)
        if status == 200:
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            tokens = sum(len(t) for t in inputs)
            payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return status, headers, payload


@pytest.fixture
def chars() -> Iterator[CharCounting]:
    fake = CharCounting()
    with http_double(_handler(fake)) as fake.url:
        yield fake


def test_the_window_is_configured_known_or_the_packaged_tokenizers(chars):
    assert make(chars, "text-embedding-3-large").max_tokens == 512  # reads 8,191; chunk 512
    assert make(chars, "my-small-model", max_tokens=120).max_tokens == 120
    settings = Settings(embedding_provider="openai", embedding_model="gte-small",
                        embedding_max_tokens=200, openai_api_key=KEY, openai_base_url=chars.url)
    assert embedder_from_settings(settings).max_tokens == 200
    # A server running all-MiniLM-L6-v2: its real window and its real tokenizer.
    mini = make(chars, "sentence-transformers/all-MiniLM-L6-v2")
    assert mini.max_tokens == 254
    assert mini.count_tokens("unbelievable tokenization") > 2
    long_text = "\n\n".join("Paragraph about embeddings and queues. " * 30 for _ in range(4))
    chunks = chunk_document("t", long_text, max_tokens=mini.max_tokens,
                            count_tokens=mini.count_tokens, split_tokens=mini.split_tokens)
    assert all(mini.count_tokens(c.embed_text) <= 254 for c in chunks)


def test_an_input_the_server_counts_over_the_window_fails_loudly(chars):
    embedder = make(chars, "my-small-model", max_tokens=20)
    ok = "short text"  # 10 characters: within 20 by any count
    too_long = "x" * 40  # 14 estimated tokens, so the chunker lets it through; 40 to the server
    assert embedder.count_tokens(too_long) <= 20
    assert len(embedder.embed([ok])) == 1
    with pytest.raises(EmbeddingJobError, match=r"counted 40 tokens.*at most 20.*"
                       r"SUPARAG_EMBEDDING_MAX_TOKENS"):
        embedder.embed([ok, too_long])
    # The mixed request was checked input by input to find the long one.
    assert chars.batches[-2:] == [[ok], [too_long]]


def test_the_worker_fails_the_overflowing_document_alone(conn, db_url, chars):
    alice = add_user(conn, "alice@example.com", team="a")
    fits = insert(conn, alice, "A short note.", title="a")
    overflows = insert(conn, alice, "y" * 45, title="b")  # 17 estimated tokens with its title
    chars.native_dims = 384  # a model that makes the column's width
    embedder: OpenAIEmbedder = make(chars, "my-small-model", max_tokens=20)
    worker = EmbeddingWorker(db_url, embedder, config=WorkerConfig(max_attempts=1))
    try:
        worker.drain()
    finally:
        worker.close()
    assert state(conn, fits)["embedding_status"] == "ready"
    failed = state(conn, overflows)
    assert failed["embedding_status"] == "failed"
    assert "SUPARAG_EMBEDDING_MAX_TOKENS" in failed["embedding_error"]
    chunks = conn.execute("select count(*) as n from public.document_chunks"
                          " where document_id = %s", (overflows,)).fetchone()
    assert chunks["n"] == 0  # never stored as if embedded
