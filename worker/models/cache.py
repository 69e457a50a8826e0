"""The query embedder of servers: a vector cache, and concurrent queries embedded together.

Apps send the same questions again (a search box's suggestions, a retried
request, the answer worker's follow-ups), and embedding is most of a search's
time (see the README's `bench search-api`). `CachedEmbedder` wraps any
Embedder:

- an LRU of at most `max_entries` vectors, one per embedder, so one per model
  and so per embedding space, keyed by the exact text: a model is
  deterministic, so a hit is the vector the model would return;
- misses of concurrent callers (the edge functions' request threads) are
  embedded in one model call: one call runs at a time, and the next takes every
  text queued meanwhile. On a 2-core machine twenty queries in one batch cost
  far less than twenty single calls contending for the cores.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future

from worker.models.base import Embedder

#: Vectors kept per model: 384 floats are ~3 KiB as a tuple, so 4,096 is ~13 MiB.
DEFAULT_ENTRIES = 4096

Vector = tuple[float, ...]


class CachedEmbedder:
    """An Embedder that remembers its last `max_entries` query vectors (thread-safe)."""

    def __init__(self, embedder: Embedder, *, max_entries: int = DEFAULT_ENTRIES) -> None:
        self.inner, self.max_entries = embedder, max_entries
        self.name = embedder.name
        self.hits = self.misses = 0
        self._vectors: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()  # the cache and the queue
        self._model = threading.Lock()  # one model call at a time
        self._queued: dict[str, Future[Vector]] = {}

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    @property
    def max_tokens(self) -> int:
        return self.inner.max_tokens

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def split_tokens(self, text: str, size: int) -> list[str]:
        return self.inner.split_tokens(text, size)

    def load(self) -> None:
        self.inner.load()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """The vectors of texts, from the cache where it has them; the rest embedded with
        whatever other callers are waiting for."""
        found: dict[str, Vector] = {}
        waiting: dict[str, Future[Vector]] = {}
        with self._lock:
            for text in texts:
                cached = self._vectors.get(text)
                if cached is not None:
                    self._vectors.move_to_end(text)
                    found[text] = cached
                    self.hits += 1
                    continue
                self.misses += 1
                if text not in waiting:
                    waiting[text] = self._queued.get(text) or self._queue(text)
        if waiting:
            with self._model:
                self._run_queue()
            for text, future in waiting.items():
                found[text] = future.result()
        return [list(found[text]) for text in texts]

    def _queue(self, text: str) -> Future[Vector]:
        future: Future[Vector] = Future()
        self._queued[text] = future
        return future

    def _run_queue(self) -> None:
        """Embed every queued text in one call (holding the model lock)."""
        with self._lock:
            batch, self._queued = self._queued, {}
        if not batch:
            return  # another caller's batch took ours
        texts = list(batch)
        try:
            vectors = self.inner.embed(texts)
        except BaseException as exc:
            for future in batch.values():
                future.set_exception(exc)
            raise
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                value = tuple(float(x) for x in vector)
                batch[text].set_result(value)
                if self.max_entries > 0:
                    self._vectors[text] = value
                    self._vectors.move_to_end(text)
            while len(self._vectors) > self.max_entries:
                self._vectors.popitem(last=False)

    def __len__(self) -> int:
        return len(self._vectors)
