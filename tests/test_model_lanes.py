"""Model calls side by side, one core each (worker/models/lanes.py, issue 16).

The real model throughout; the wrappers below only watch its calls (when they
start, how many run at once) or refuse one, as a poison document would.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from worker.errors import ConfigError
from worker.jobs.embedding import EmbeddingWorker
from worker.models.lanes import Lanes, lane_cores, split_across_cores, spread, torch_threads
from worker.models.openai import OpenAIEmbedder
from worker.usage import MeteredEmbedder

TEXTS = [f"Paragraph {i}: the nightly backup of replica {i} is checked by the team."
         * (1 + i % 4) for i in range(12)]


class Watched:
    """The real model; counts the calls running at once, and runs hook(texts) first."""

    def __init__(self, embedder, hook=None):
        self._embedder, self._hook = embedder, hook
        self.name = embedder.name
        self.running = self.most = 0
        self.started: list[list[str]] = []
        self._lock = threading.Lock()

    def embed(self, texts):
        with self._lock:
            self.started.append(list(texts))
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self._hook is not None:
                self._hook(texts)
            return self._embedder.embed(texts)
        finally:
            with self._lock:
                self.running -= 1


def close_to(a, b):
    return len(a) == len(b) and all(
        x == pytest.approx(y, abs=1e-5) for u, v in zip(a, b, strict=True)
        for x, y in zip(u, v, strict=True))


def test_calls_in_lanes_give_the_vectors_of_calls_one_at_a_time_in_order(embedder):
    calls = [TEXTS[i:i + 3] for i in range(0, len(TEXTS), 3)]
    lanes = Lanes(embedder, 2)
    try:
        got = lanes.embed_calls(calls)
        again = lanes.embed_calls(calls)  # the first call of the lanes' life ran alone
    finally:
        lanes.close()
    expected = [embedder.embed(c) for c in calls]
    assert [len(v) for v in got] == [3, 3, 3, 3]
    assert all(close_to(g, e) for g, e in zip(got, expected, strict=True))
    assert all(close_to(g, e) for g, e in zip(again, expected, strict=True))


def test_two_lanes_run_two_calls_at_once_and_never_more(embedder):
    both = threading.Barrier(2, timeout=20)  # broken unless two calls run together

    def hook(texts):
        if texts[0] in (TEXTS[2], TEXTS[4]):  # the first two calls after the warm-up
            both.wait()

    model = Watched(embedder, hook)
    lanes = Lanes(model, 2)
    try:
        lanes.embed_calls([TEXTS[:2]])  # warm-up: the lanes' first call runs alone
        before: list[int] = []
        vectors = lanes.embed_calls([TEXTS[i:i + 2] for i in range(2, 12, 2)],
                                    before=lambda: before.append(model.running))
    finally:
        lanes.close()
    assert model.most == 2 and not both.broken
    assert [len(v) for v in vectors] == [2] * 5
    # before() ran on the calling thread ahead of each call (the last two calls of the five
    # run as halves: seven), never with both lanes busy.
    assert len(before) == 7 and max(before) <= 1


def test_a_failing_call_is_raised_and_no_call_starts_after_it(embedder):
    def hook(texts):
        if any("poison" in t for t in texts):
            raise ValueError("poison refused")

    model = Watched(embedder, hook)
    calls = [TEXTS[:2], ["poison"], *[TEXTS[i:i + 2] for i in range(2, 12, 2)]]
    lanes = Lanes(model, 2)
    try:
        lanes.embed_calls([TEXTS[:1]])
        model.started.clear()
        with pytest.raises(ValueError, match="poison refused"):
            lanes.embed_calls(calls)
    finally:
        lanes.close()
    # The poison call and at most the call beside it, and the one after that already running
    # when it failed; the other four were never started.
    assert ["poison"] in model.started and len(model.started) <= 3
    assert model.running == 0  # nothing left running behind the raise


def test_a_batch_of_fewer_calls_than_lanes_is_spread_over_them(embedder):
    assert spread([["a", "b", "c"]], 2) == ([["a", "b"], ["c"]], [2])
    assert spread([["a", "b", "c", "d"], ["e"]], 4) == (
        [["a"], ["b"], ["c", "d"], ["e"]], [3, 1])
    assert spread([["a"]], 2) == ([["a"]], [1])  # one text: nothing to split
    assert spread([["a", "b"], ["c", "d"]], 2) == ([["a", "b"], ["c", "d"]], [1, 1])
    model = Watched(embedder)
    lanes = Lanes(model, 2)
    try:
        lanes.embed_calls([TEXTS[:1]])
        model.started.clear()
        (vectors,) = lanes.embed_calls([TEXTS[:5]])  # an edit of five chunks: one call
    finally:
        lanes.close()
    assert sorted(map(len, model.started)) == [2, 3]  # run as two, one per lane
    assert close_to(vectors, embedder.embed(TEXTS[:5]))


def test_a_batch_of_more_calls_than_lanes_ends_in_halves(embedder):
    """The last call of each lane is halved, so the lanes end a batch close together."""
    assert spread([["a", "b"], ["c", "d"], ["e", "f", "g"]], 2) == (
        [["a", "b"], ["c"], ["d"], ["e", "f"], ["g"]], [1, 2, 2])
    assert spread([["a", "b"], ["c"], ["d", "e"]], 2) == (
        [["a", "b"], ["c"], ["d"], ["e"]], [1, 1, 2])  # one text: not split
    assert spread([["a", "b"], ["c", "d"], ["e", "f"]], 1) == (
        [["a", "b"], ["c", "d"], ["e", "f"]], [1, 1, 1])  # one lane: nothing to even out
    model = Watched(embedder)
    calls = [TEXTS[i:i + 3] for i in range(0, 12, 3)]
    lanes = Lanes(model, 2)
    try:
        lanes.embed_calls([TEXTS[:1]])
        model.started.clear()
        vectors = lanes.embed_calls(calls)
    finally:
        lanes.close()
    halves = [TEXTS[0:3], TEXTS[3:6], TEXTS[6:8], TEXTS[8:9], TEXTS[9:11], TEXTS[11:12]]
    assert sorted(model.started) == sorted(halves)
    assert all(close_to(v, embedder.embed(c)) for v, c in zip(vectors, calls, strict=True))


def test_a_local_model_on_the_cpu_gets_a_lane_per_core_and_torch_one_thread_each(
        embedder, db_url):
    import torch

    cores = torch_threads()
    assert cores is not None and cores >= 1
    # Looked through the usage meter, as `suparag worker` wraps the model.
    assert split_across_cores(MeteredEmbedder(embedder, db_url, feature="test")) == cores
    assert torch.get_num_threads() == 1 and torch_threads() == cores
    assert split_across_cores(embedder) == cores  # asked again: the same answer
    # A remote model's calls are not split over this machine's cores.
    assert split_across_cores(OpenAIEmbedder("text-embedding-3-small", api_key="k")) == 1
    worker = EmbeddingWorker(db_url, embedder)
    try:
        assert worker.lanes.lanes == cores
    finally:
        worker.close()
    assert EmbeddingWorker(db_url, embedder, lanes=1).lanes.lanes == 1
    with pytest.raises(ConfigError, match="model lanes 0"):
        EmbeddingWorker(db_url, embedder, lanes=0)


def test_the_lanes_first_batch_runs_its_first_call_alone_then_the_rest_side_by_side(embedder):
    both = threading.Barrier(2, timeout=20)
    seen_during_first: list[int] = []

    def hook(texts):
        if texts[0] == TEXTS[0]:  # the first call of the lanes' life
            time.sleep(0.3)  # time for a second call to start beside it, if one could
            seen_during_first.append(len(model.started))
        elif texts[0] in (TEXTS[2], TEXTS[4]):  # the next two: together
            both.wait()

    model = Watched(embedder, hook)
    lanes = Lanes(model, 2)
    try:
        vectors = lanes.embed_calls([TEXTS[i:i + 2] for i in range(0, 12, 2)])
    finally:
        lanes.close()
    assert seen_during_first == [1]  # nothing else had started while it ran
    assert model.most == 2 and not both.broken
    assert [len(v) for v in vectors] == [2] * 6


def test_as_many_lanes_as_cpus_are_pinned_one_cpu_each_and_more_are_not(embedder):
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2  # the suite's machines have two cores or more
    calls = [TEXTS[i:i + 2] for i in range(0, len(TEXTS), 2)]

    def affinities(lanes_count: int, pin: bool = True) -> list[set[int]]:
        seen: dict[int, set[int]] = {}
        watched = Watched(embedder, lambda texts: seen.__setitem__(
            threading.get_ident(), os.sched_getaffinity(0)))
        lanes = Lanes(watched, lanes_count, pin=pin)
        try:
            lanes.embed_calls(calls)
        finally:
            lanes.close()
        seen.pop(threading.get_ident(), None)  # the first call ran alone, on this thread
        return list(seen.values())

    pinned = affinities(len(cpus))
    assert sorted(len(s) for s in pinned) == [1] * len(cpus)
    assert sorted(cpu for s in pinned for cpu in s) == cpus  # a different CPU each
    assert os.sched_getaffinity(0) == set(cpus)  # the calling thread is left alone
    assert lane_cores(len(cpus) + 1) is None and lane_cores(1) is None
    more = affinities(len(cpus) + 1)  # more lanes than CPUs: left to the scheduler
    assert len(more) == len(cpus) + 1 and all(s == set(cpus) for s in more)
    off = affinities(len(cpus), pin=False)  # suparag worker --no-pin-lanes
    assert len(off) == len(cpus) and all(s == set(cpus) for s in off)
