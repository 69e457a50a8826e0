"""The query-vector cache (worker/models/cache.py) over the real model: an LRU per model,
exact vectors, and the answer worker's query embedding going through it (issue 18)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from test_answering import CORPUS, ask, cited, corpus, worker_factory  # noqa: F401 (fixtures)

from worker.models.cache import CachedEmbedder


def close(a: list[float], b: list[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


class Counting:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.calls = inner, inner.name, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        result: list[list[float]] = self.inner.embed(texts)
        return result


def test_the_cache_returns_the_models_vectors_and_evicts_the_least_recent(embedder):
    model = Counting(embedder)
    cache = CachedEmbedder(model, max_entries=2)
    first = cache.embed(["alpha", "beta"])
    assert cache.embed(["alpha"]) == [first[0]]  # a hit: no model call
    assert model.calls == [["alpha", "beta"]]
    cache.embed(["gamma"])  # evicts beta, the least recently used
    assert len(cache) == 2
    again = cache.embed(["beta", "alpha", "beta"])
    assert model.calls[-1] == ["beta"]  # alpha still held, beta embedded once for two
    assert again[0] == again[2]  # one vector for both
    assert again[1] == first[0]  # the cached vector itself
    # beta re-embedded alone: the model's vector, up to batch padding noise.
    assert close(again[0], first[1])
    assert (cache.hits, cache.misses) == (2, 5)  # per text asked for
    assert all(close(got, want) for got, want in zip(first, embedder.embed(["alpha", "beta"]),
                                                     strict=True))


def test_a_zero_sized_cache_keeps_nothing(embedder):
    model = Counting(embedder)
    cache = CachedEmbedder(model, max_entries=0)
    cache.embed(["same"])
    cache.embed(["same"])
    assert len(model.calls) == 2 and len(cache) == 0


def test_the_answer_worker_embeds_a_repeated_question_once(conn, world, corpus, db_url,  # noqa: F811
                                                           embedder):
    from worker.jobs.answering import AnswerConfig, AnswerWorker

    model = Counting(embedder)
    question = "How many hearts does an octopus have?"
    alice_q = ask(conn, world.users["alice"], question)
    bob_q = ask(conn, world.users["bob"], question)
    conn.commit()
    worker = AnswerWorker(db_url, model, config=AnswerConfig(backoff_base_seconds=0.0))
    try:
        assert worker.run_batch().answered == 2
    finally:
        worker.close()
    assert [call for call in model.calls if question in call] == [[question]]
    answers = {row["question_id"]: row for row in conn.execute(
        "select question_id, citations from public.answers").fetchall()}
    conn.commit()
    # Still retrieved as each asker: the cache holds the vector, not anyone's results.
    assert cited(corpus, answers[alice_q["id"]]) != cited(corpus, answers[bob_q["id"]])


def test_concurrent_misses_are_embedded_in_one_model_call(embedder):
    import threading
    import time

    first_call = threading.Event()
    release = threading.Event()

    class Held(Counting):
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            if not first_call.is_set():  # hold the first call until the others queue
                first_call.set()
                assert release.wait(30)
            return super().embed(texts)

    model = Held(embedder)
    cache = CachedEmbedder(model)
    texts = [f"question number {i}" for i in range(8)]
    results: dict[str, list[float]] = {}

    def ask(text: str) -> None:
        results[text] = cache.embed([text])[0]

    threads = [threading.Thread(target=ask, args=(texts[0],))]
    threads[0].start()
    assert first_call.wait(30)
    threads += [threading.Thread(target=ask, args=(t,)) for t in texts[1:]]
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 30
    while len(cache._queued) < 7:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(30)
    # The first text alone, then the seven that queued behind it in one call.
    assert sorted(len(call) for call in model.calls) == [1, 7]
    want = embedder.embed(texts)
    assert all(close(results[t], w) for t, w in zip(texts, want, strict=True))


def test_warm_loads_the_model_before_the_first_call(embedder):
    """`suparag dev` and `suparag serve` start loading the model at start-up (warm), so a
    first search does not wait for it; the first call then reuses that model."""
    from worker.edge.auth import Gateway
    from worker.edge.functions import EdgeConfig, EdgeFunctions

    built: list[Counting] = []

    def factory() -> Counting:
        built.append(Counting(embedder))
        return built[-1]

    functions = EdgeFunctions(EdgeConfig(gateway=Gateway(api_keys=frozenset({"k"}),
                                                         jwt_secret="s" * 32)), factory)
    assert built == []  # nothing loads until asked
    functions.warm().join(timeout=120)
    assert len(built) == 1 and built[0].calls == [["warm up"]]
    first = functions.default_embedder()
    assert len(built) == 1  # the first caller gets the warmed model, not a new one
    assert first.embed(["a question"])[0] == embedder.embed(["a question"])[0]
