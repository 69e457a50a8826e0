"""The openai embedder against an HTTP-level double of `POST /v1/embeddings`.

The double is a real HTTP server on 127.0.0.1 (stdlib, in a thread) that
answers like OpenAI: deterministic vectors derived from each input's words,
`data` items carrying their `index` (sent in reverse order, so the client
must use it), `usage`. A script of canned answers (429, 503, 500, 401, ...)
is served first; every request is recorded with the time it arrived.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from conftest import http_double

from worker.db import as_request
from worker.errors import ConfigError, EmbeddingServiceError
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.models.factory import embedder_for_model, embedder_from_settings, make_embedder
from worker.models.local import SentenceTransformerEmbedder
from worker.models.openai import OpenAIEmbedder, estimate_tokens, split_estimated
from worker.settings import Settings
from worker.users import add_user

KEY = "sk-test-key"


def word_vector(text: str, dims: int) -> list[float]:
    """A unit vector with one hashed dimension per word: texts sharing words are close."""
    values = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()):
        values[int(hashlib.sha256(word.encode()).hexdigest(), 16) % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in values))
    if norm == 0:
        values[0], norm = 1.0, 1.0
    return [v / norm for v in values]


@dataclass
class Recorded:
    at: float  # time.monotonic() on arrival
    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class FakeOpenAI:
    """The double's state: what it answers and what it was asked."""

    url: str = ""
    native_dims: int = 1536  # width when the request names no `dimensions`
    honour_dimensions: bool = True
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # served first
    always: int | None = None  # then this status for every request, if set
    refuse: str | None = None  # HTTP 400 for any request with an input holding this text
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self.lock:
            canned = self.script.pop(0) if self.script else None
        if canned is None and self.always is not None:
            canned = (self.always, {})
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if canned is None and self.refuse is not None and any(
                self.refuse in text for text in inputs):
            canned = (400, {})
        if canned is not None:
            status, headers = canned
            return status, headers, {"error": {
                "message": f"canned failure {status}", "type": "server_error", "code": None}}
        dims = body.get("dimensions") if self.honour_dimensions else None
        data = [{"object": "embedding", "index": i,
                 "embedding": word_vector(text, dims or self.native_dims)}
                for i, text in enumerate(inputs)]
        tokens = sum(len(t.split()) for t in inputs)
        return 200, {}, {"object": "list", "model": body["model"], "data": data[::-1],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @property
    def batches(self) -> list[list[str]]:
        """The inputs of each request, in order of arrival."""
        return [r.body["input"] for r in self.requests]


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(Recorded(time.monotonic(), self.path,
                                          self.headers.get("Authorization"), body))
            if self.path != "/v1/embeddings":
                status, headers, payload = 404, {}, {"error": {"message": "no such route"}}
            else:
                status, headers, payload = fake.answer(body)
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    with http_double(_handler(fake)) as fake.url:
        yield fake


def make(server: FakeOpenAI, model: str = "text-embedding-3-small", **options: Any
         ) -> OpenAIEmbedder:
    options.setdefault("backoff_base_seconds", 0.01)
    return OpenAIEmbedder(model, api_key=KEY, base_url=server.url, **options)


@pytest.fixture
def alice(conn):
    """One user and no documents yet, so the queue holds only what a test inserts."""
    user = add_user(conn, "alice@example.com", team="a")
    conn.commit()
    return user


def insert(conn, owner, content, *, title="Doc"):
    row = conn.execute(
        "insert into public.documents (owner_id, title, content, visibility)"
        " values (%s, %s, %s, 'private') returning id",
        (owner.id, title, content)).fetchone()
    conn.commit()
    return row["id"]


def state(conn, doc_id):
    row = conn.execute(
        "select d.embedding_status, d.embedding_error, d.embedding_model,"
        " j.status as job_status, j.attempts, j.last_error"
        " from public.documents d"
        " left join suparag_private.embedding_jobs j on j.document_id = d.id"
        " where d.id = %s", (doc_id,)).fetchone()
    conn.commit()
    return row


# -- requests, batching, order ---------------------------------------------------------------

def test_vectors_in_input_order_across_batches_within_the_limits(server):
    embedder = make(server, max_batch_inputs=4, max_batch_tokens=120)
    texts = [f"passage {i} " + "about row level security " * (i % 4) for i in range(13)]
    vectors = embedder.embed(texts)

    assert vectors == [word_vector(t, 384) for t in texts]
    assert len(server.requests) > 3
    assert [t for batch in server.batches for t in batch] == texts   # in order, none twice
    for batch in server.batches:
        assert len(batch) <= 4
        assert sum(embedder.request_tokens(t) for t in batch) <= 120
    assert all(r.authorization == f"Bearer {KEY}" for r in server.requests)
    body = server.requests[0].body
    assert body["model"] == "text-embedding-3-small" and body["dimensions"] == 384
    assert body["encoding_format"] == "float"
    assert embedder.name == "openai/text-embedding-3-small" and embedder.dimensions == 384


def test_nothing_to_embed_sends_nothing(server):
    assert make(server).embed([]) == []
    assert server.requests == []


def test_other_models_are_sent_without_dimensions_and_learn_theirs(server):
    server.native_dims = 768
    embedder = make(server, model="nomic-embed-text")
    assert embedder.dimensions == 768          # learned from a first response
    assert "dimensions" not in server.requests[0].body
    assert len(embedder.embed(["hello"])[0]) == 768


def test_a_server_that_ignores_dimensions_is_a_clear_error(server):
    server.honour_dimensions = False
    with pytest.raises(EmbeddingServiceError, match=r"1536-dimensional.*expected 384.*ignores"):
        make(server).embed(["hello"])


# -- retries -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "value", "seconds"), [
    ("Retry-After", "1", 1.0),
    ("retry-after-ms", "400", 0.4),
])
def test_429_waits_as_long_as_the_server_asks_then_succeeds(server, header, value, seconds):
    server.script = [(429, {header: value})]
    # Backoff of its own would be ~10 ms: a longer gap comes from the header.
    embedder = make(server, backoff_base_seconds=0.01)
    assert embedder.embed(["alpha beta", "gamma"]) == [word_vector("alpha beta", 384),
                                                      word_vector("gamma", 384)]
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body
    assert server.requests[1].at - server.requests[0].at >= seconds - 0.02


def test_503_then_200_is_retried(server):
    server.script = [(503, {}), (502, {})]
    assert make(server).embed(["alpha"]) == [word_vector("alpha", 384)]
    assert len(server.requests) == 3


def test_retries_stop_at_the_cap_with_the_status_and_server_named(server):
    server.always = 500
    with pytest.raises(EmbeddingServiceError) as caught:
        make(server, max_attempts=3).embed(["alpha"])
    assert len(server.requests) == 3
    assert "HTTP 500" in str(caught.value) and server.url in str(caught.value)
    assert "3 attempts" in str(caught.value) and "canned failure 500" in str(caught.value)


def test_a_retry_after_beyond_the_limit_is_not_waited_for(server):
    server.script = [(429, {"Retry-After": "3600"})]
    with pytest.raises(EmbeddingServiceError, match="asks to wait 3600 s"):
        make(server, max_retry_wait_seconds=30).embed(["alpha"])
    assert len(server.requests) == 1


@pytest.mark.parametrize(("status", "error", "message"), [
    (401, ConfigError, r"refused the API key.*SUPARAG_OPENAI_API_KEY"),
    (400, EmbeddingServiceError, r"rejected the embedding request.*HTTP 400.*not retried"),
    (404, ConfigError, r"SUPARAG_OPENAI_BASE_URL.*SUPARAG_EMBEDDING_MODEL"),
])
def test_client_errors_are_not_retried(server, status, error, message):
    server.always = status
    with pytest.raises(error, match=message):
        make(server).embed(["alpha"])
    assert len(server.requests) == 1


def test_an_unreachable_server_fails_after_the_cap():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    embedder = OpenAIEmbedder(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1",
                              max_attempts=2, backoff_base_seconds=0.01)
    with pytest.raises(EmbeddingServiceError, match=rf"cannot reach .*:{port}.* 2 attempts"):
        embedder.embed(["alpha"])


# -- with the embedding worker and the database ------------------------------------------------

def test_worker_embeds_with_openai_and_search_finds_the_vectors(conn, alice, db_url, server):
    rls = insert(conn, alice, "Row level security decides who reads which rows.", title="RLS")
    queue = insert(conn, alice, "Workers claim embedding jobs from a queue.", title="Queue")
    embedder = make(server)
    worker = EmbeddingWorker(db_url, embedder, config=WorkerConfig())
    try:
        assert worker.drain().embedded == 2
    finally:
        worker.close()

    assert {r.body["dimensions"] for r in server.requests} == {384}
    for doc_id in (rls, queue):
        assert state(conn, doc_id)["embedding_status"] == "ready"
        assert state(conn, doc_id)["embedding_model"] == "openai/text-embedding-3-small"
    models = conn.execute("select distinct embedding_model from public.document_chunks"
                          " where document_id = any(%s)", ([rls, queue],)).fetchall()
    assert models == [{"embedding_model": "openai/text-embedding-3-small"}]
    conn.commit()

    query = embedder.embed(["who reads which rows under security?"])[0]
    with as_request(conn, alice.claims()):
        hits = conn.execute(
            "select document_id from public.match_documents(%s::extensions.vector, 2,"
            " embedding_model => %s)", (str(query), embedder.name)).fetchall()
    assert [h["document_id"] for h in hits] == [rls, queue]


def test_a_server_that_always_fails_ends_the_document_failed_after_the_cap(
        conn, alice, db_url, server):
    server.always = 500
    doc_id = insert(conn, alice, "This text never gets a vector.")
    # Two HTTP attempts per job attempt, two job attempts, no backoff between them.
    worker = EmbeddingWorker(db_url, make(server, max_attempts=2),
                             config=WorkerConfig(max_attempts=2, backoff_base_seconds=0))
    try:
        result = worker.drain()
    finally:
        worker.close()

    assert (result.retrying, result.failed, result.embedded) == (1, 1, 0)
    assert len(server.requests) == 4
    row = state(conn, doc_id)
    assert row["embedding_status"] == "failed" and row["job_status"] == "failed"
    assert row["attempts"] == 2
    assert "HTTP 500" in row["embedding_error"] and server.url in row["embedding_error"]
    assert row["last_error"] == row["embedding_error"]
    assert conn.execute("select count(*) as n from public.document_chunks where document_id = %s",
                        (doc_id,)).fetchone()["n"] == 0


def test_an_outage_fails_the_batch_once_not_once_per_document(conn, alice, db_url, server):
    # A 400 is about one document's input, so the worker retries documents alone to find
    # it; an exhausted 5xx is about the service, and retrying per document only hammers it.
    server.always = 503
    ids = [insert(conn, alice, f"document {i} waiting out an outage") for i in range(3)]
    worker = EmbeddingWorker(db_url, make(server, max_attempts=2),
                             config=WorkerConfig(max_attempts=1))
    try:
        assert worker.drain().failed == 3
    finally:
        worker.close()
    assert len(server.requests) == 2          # one batch, its two HTTP attempts
    assert {state(conn, i)["embedding_status"] for i in ids} == {"failed"}


def test_a_rejected_document_fails_alone_and_the_others_embed(conn, alice, db_url, server):
    ids = [insert(conn, alice, f"fine document {i}") for i in range(3)]
    server.script = [(400, {})]               # the combined batch is refused once
    worker = EmbeddingWorker(db_url, make(server),
                             config=WorkerConfig(max_attempts=1))
    try:
        result = worker.drain()
    finally:
        worker.close()
    # Retried one by one, all three go through: nothing is lost to a neighbour's error.
    assert result.embedded == 3 and len(server.requests) == 4
    assert {state(conn, i)["embedding_status"] for i in ids} == {"ready"}


def test_a_768_dimension_model_fails_the_job_with_the_dimension_error(
        conn, alice, db_url, server):
    server.native_dims = 768
    doc_id = insert(conn, alice, "Too wide for the column.")
    worker = EmbeddingWorker(db_url, make(server, model="nomic-embed-text"),
                             config=WorkerConfig(max_attempts=1))
    try:
        assert worker.drain().failed == 1
    finally:
        worker.close()
    row = state(conn, doc_id)
    assert row["embedding_status"] == "failed"
    assert "openai/nomic-embed-text makes 768-dimensional vectors" in row["embedding_error"]
    assert "holds 384" in row["embedding_error"]


# -- tokens ------------------------------------------------------------------------------------

def test_estimate_is_bytes_over_three_rounded_up():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1 and estimate_tokens("abcd") == 2
    assert estimate_tokens("é") == 1 and estimate_tokens("日本") == 2  # 2 and 6 bytes
    # The true count is at most the byte count, so at most 3x the estimate.
    assert all(len(t.encode()) <= 3 * estimate_tokens(t) for t in ("1 2 3 4", "🙂🙂", "x"))


def test_split_estimated_fits_keeps_characters_and_words():
    text = ("Zürich naïve café 日本語のテキスト " * 40).strip()
    runs = split_estimated(text, 20)
    assert len(runs) > 5
    assert all(estimate_tokens(r) <= 20 for r in runs)
    assert "".join(runs).replace(" ", "") == text.replace(" ", "")   # nothing lost or broken
    assert all(not r.startswith(("ürich", "aïve", "afé")) for r in runs)  # cut between words
    assert split_estimated("🙂" * 5, 1) == ["🙂"] * 5    # a run holds at least one character


def test_count_and_split_tokens_agree_and_chunks_fit(server):
    embedder = make(server)
    assert embedder.max_tokens == 512
    text = "word " * 3000
    runs = embedder.split_tokens(text, 100)
    assert all(embedder.count_tokens(r) <= 100 for r in runs)
    assert " ".join(runs).split() == text.split()
    assert all(embedder.request_tokens(t) >= embedder.count_tokens(t) for t in (text, "日本"))


# -- choosing an embedder ------------------------------------------------------------------------

def test_make_embedder_and_settings(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    local = make_embedder("sentence-transformers")
    assert isinstance(local, SentenceTransformerEmbedder)
    assert local.name == "sentence-transformers/all-MiniLM-L6-v2"

    settings = Settings(embedding_provider="openai", openai_api_key=KEY,
                        openai_base_url="http://127.0.0.1:9/v1")
    remote = embedder_from_settings(settings)
    assert isinstance(remote, OpenAIEmbedder)
    assert remote.name == "openai/text-embedding-3-small" and remote.dimensions == 384
    assert remote.base_url == "http://127.0.0.1:9/v1"

    with pytest.raises(ConfigError, match=r"unknown embedding provider 'cohere'.*'openai'"):
        make_embedder("cohere", "embed-v3")
    with pytest.raises(ConfigError, match=r"needs an API key.*SUPARAG_OPENAI_API_KEY"):
        make_embedder("openai")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8/v1")
    from_env = make_embedder("openai", "text-embedding-3-large")
    assert isinstance(from_env, OpenAIEmbedder)
    assert from_env.base_url == "http://127.0.0.1:8/v1" and from_env.dimensions == 384


def test_embedder_for_model_rebuilds_the_embedder_a_stored_name_came_from(server):
    settings = Settings(openai_api_key=KEY, openai_base_url=server.url)
    remote = embedder_for_model("openai/text-embedding-3-small", settings)
    assert isinstance(remote, OpenAIEmbedder)
    assert remote.model == "text-embedding-3-small"
    assert remote.name == "openai/text-embedding-3-small"
    assert remote.embed(["alpha"]) == [word_vector("alpha", 384)]   # on the configured server
    # OpenRouter-style names keep everything after the first prefix.
    routed = embedder_for_model("openai/openai/text-embedding-3-small", settings)
    assert isinstance(routed, OpenAIEmbedder)
    assert routed.model == "openai/text-embedding-3-small" and routed.dimensions == 384
    local = embedder_for_model("Supabase/gte-small", settings)
    assert isinstance(local, SentenceTransformerEmbedder) and local.name == "Supabase/gte-small"


def test_importing_embedders_loads_neither_openai_nor_torch():
    code = ("import sys, worker.models.factory; "
            "print(sorted(m for m in ('openai', 'torch', 'sentence_transformers')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
