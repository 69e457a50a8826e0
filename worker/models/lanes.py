"""Model calls side by side, one core each, instead of one call across all cores (issue 16).

torch runs one call on all the machine's cores (intra-op threads); the
threads meet at a barrier after every operator, thousands of times a call, and
spin while they wait. On a machine whose cores the worker shares with its own
database work, its chunking and PostgreSQL, each time one of those threads
loses its core the others spin at the next barrier. Calls run one per core,
on threads of their own, with torch at one thread each, have no such barrier:
a call slowed by a neighbour slows only itself, and the worker's calls of a
batch are independent of one another. Measured on this 2-core machine
(README, "Measured", session 15): two one-thread calls at once embed more
chunks per second than one two-thread call, and the worker's end-to-end rate
gains more than the bare model's.

torch's thread count is the process's (a thread's own setting does not hold:
torch re-reads the process-wide count when a new thread first runs an
operator), so `split_across_cores` sets it to one for the whole process.
Only a process whose model calls go through lanes should do it: the worker.

When there are exactly as many lanes as CPUs the process may run on, each
lane's thread is pinned to one of them (`sched_setaffinity`, Linux). Left to
the scheduler, a lane preempted by the database or the chunking thread was
often moved to the other core, and its call restarted on cold caches: the
same calls took 1-3% more CPU in the worker than bare. Pinned, they took
the same (README, "Measured", session 17). Lanes more or fewer than those
CPUs are not pinned: which cores are free (or siblings of one core) is not
theirs to know. `suparag worker --no-pin-lanes` turns pinning off.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from worker.models.base import Embedder

log = logging.getLogger(__name__)

_switched: int | None = None  # the cores torch had, once split_across_cores switched it
_switch_lock = threading.Lock()


def torch_threads() -> int | None:
    """torch's threads in this process as they were before split_across_cores switched
    them to one (None when torch is not installed)."""
    if _switched is not None:
        return _switched
    try:
        import torch
    except ImportError:
        return None
    return int(torch.get_num_threads())


def split_across_cores(embedder: Embedder) -> int:
    """How many of embedder's calls should run at once: for a local torch model on the
    CPU, the threads torch had, after switching this process's torch to one thread per
    call; 1 (calls one at a time, nothing switched) for any other model.

    A wrapper (MeteredEmbedder) is looked through via its `inner` embedder."""
    from worker.models.local import SentenceTransformerEmbedder

    inner: Any = embedder
    while not isinstance(inner, SentenceTransformerEmbedder) and hasattr(inner, "inner"):
        inner = inner.inner
    if not isinstance(inner, SentenceTransformerEmbedder) or inner.device != "cpu":
        return 1
    global _switched
    with _switch_lock:
        if _switched is None:
            import torch

            _switched = max(1, int(torch.get_num_threads()))
            torch.set_num_threads(1)
        return _switched


class Lanes:
    """Runs an embedder's calls, up to `lanes` at once, on threads of its own."""

    def __init__(self, embedder: Embedder, lanes: int, *, pin: bool = True) -> None:
        if lanes < 1:
            raise ValueError("lanes must be at least 1")
        self.embedder = embedder
        self.lanes = lanes
        self.pin = pin  # each lane's thread on a core of its own, where lane_cores allows
        self._pool: ThreadPoolExecutor | None = None
        self._first = True  # the first call runs alone (below)

    def embed_calls(self, calls: Iterable[Sequence[str]],
                    before: Callable[[], None] | None = None) -> list[list[list[float]]]:
        """The vectors of each call, in order. before() runs on the calling thread before
        each call is started (the pipeline takes interactive work there).

        At most `lanes` calls run at once. If a call fails, no more are started, the
        ones running are waited for, and the first failure is raised."""
        whole = list(calls)
        calls, parts = spread(whole, self.lanes)
        results: list[list[list[float]] | None] = [None] * len(calls)
        # One at a time: with a single lane, and the very first call of the lanes' life,
        # which sets the tokenizer's padding state that later calls share unchanged (set by
        # two calls at once, one would change it under the other).
        alone = len(calls) if self.lanes == 1 or len(calls) < 2 else int(self._first)
        for i in range(alone):
            if before is not None:
                before()
            results[i] = self.embedder.embed(calls[i])
            self._first = False
        if alone == len(calls):
            return _joined(results, parts)
        pool = self._executor()
        running: dict[Future[list[list[float]]], int] = {}
        failure: BaseException | None = None
        try:
            for i, texts in enumerate(calls[alone:], start=alone):
                while len(running) >= self.lanes:
                    failed = self._collect(running, results)
                    failure = failure or failed
                if failure is not None:
                    break
                if before is not None:
                    before()
                running[pool.submit(self.embedder.embed, texts)] = i
            while running:
                failed = self._collect(running, results)
                failure = failure or failed
        except BaseException:
            for future in running:
                future.cancel()
            wait(running)
            raise
        if failure is not None:
            raise failure
        return _joined(results, parts)

    @staticmethod
    def _collect(running: dict[Future[list[list[float]]], int],
                 results: list[list[list[float]] | None]) -> BaseException | None:
        """Wait for a running call to end; store its vectors; its failure, if it failed."""
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        failure = None
        for future in done:
            i = running.pop(future)
            error = future.exception()
            if error is not None:
                failure = failure or error
            else:
                results[i] = future.result()
        return failure

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            cores = lane_cores(self.lanes) if self.pin else None
            log.info("model lanes: %d, %s", self.lanes, "left to the scheduler" if cores is None
                     else "pinned to CPUs " + ", ".join(map(str, cores)))
            if cores is None:
                self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="suparag-model")
            else:
                turn = itertools.count()
                self._pool = ThreadPoolExecutor(
                    self.lanes, thread_name_prefix="suparag-model",
                    initializer=lambda: os.sched_setaffinity(0, {cores[next(turn) % len(cores)]}))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def lane_cores(lanes: int) -> list[int] | None:
    """The CPUs to pin `lanes` lane threads to, one each: those this process may run on,
    when there are exactly `lanes` of them; None (no pinning) otherwise, or on a system
    without sched_setaffinity."""
    if lanes < 2:
        return None
    if not hasattr(os, "sched_getaffinity") or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return cpus if len(cpus) == lanes else None


def spread(calls: list[Sequence[str]], lanes: int) -> tuple[list[Sequence[str]], list[int]]:
    """calls as the lanes run them, and how many of the new calls make up each given one,
    in order:

    - fewer calls than lanes (an edit of a few chunks): the biggest halved until there are
      `lanes` of them (while any holds two texts or more), so that every core has one;
    - more calls than lanes (a bulk batch): the last `lanes` halved. The lanes drift apart
      over a batch, and the batch ends when its last call does, a lane idle meanwhile:
      with halves at the end, the lanes end within about half a call of one another."""
    pieces: list[list[Sequence[str]]] = [[texts] for texts in calls]
    if lanes > 1 and len(calls) > lanes:
        for piece in pieces[-lanes:]:
            if len(piece[0]) >= 2:
                piece[:] = _halves(piece[0])
    while calls and sum(map(len, pieces)) < lanes:
        i, j = max(((i, j) for i, piece in enumerate(pieces) for j in range(len(piece))),
                   key=lambda ij: len(pieces[ij[0]][ij[1]]))
        if len(pieces[i][j]) < 2:
            break
        pieces[i][j:j + 1] = _halves(pieces[i][j])
    return [texts for piece in pieces for texts in piece], [len(piece) for piece in pieces]


def _halves(texts: Sequence[str]) -> list[Sequence[str]]:
    """texts as two calls, the first the larger by one if their number is odd."""
    half = (len(texts) + 1) // 2
    return [texts[:half], texts[half:]]


def _joined(results: list[list[list[float]] | None], parts: list[int]
            ) -> list[list[list[float]]]:
    """Each given call's vectors from those of its parts (spread)."""
    joined, at = [], 0
    for n in parts:
        vectors: list[list[float]] = []
        for result in results[at:at + n]:
            assert result is not None  # every call ran, or embed_calls raised
            vectors.extend(result)
        joined.append(vectors)
        at += n
    return joined
