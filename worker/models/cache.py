"""The query-vector cache: the same query text, embedded by the same model, is embedded once.

Apps send the same questions again (a search box's suggestions, a retried
request, the answer worker's follow-ups), and embedding is most of a search's
time (see the README's `bench search-api`). `CachedEmbedder` wraps any
Embedder; its cache is an LRU of at most `max_entries` vectors, one per
embedder, so one per model and so per embedding space. Vectors are keyed by the
exact text: a model is deterministic, so a hit is the vector the model would
return.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from worker.models.base import Embedder

#: Vectors kept per model: 384 floats are ~3 KiB as a tuple, so 4,096 is ~13 MiB.
DEFAULT_ENTRIES = 4096


class CachedEmbedder:
    """An Embedder that remembers its last `max_entries` query vectors (thread-safe)."""

    def __init__(self, embedder: Embedder, *, max_entries: int = DEFAULT_ENTRIES) -> None:
        self.inner, self.max_entries = embedder, max_entries
        self.name = embedder.name
        self.hits = self.misses = 0
        self._vectors: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._lock = threading.Lock()

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
        """The vectors of texts, from the cache where it has them; the rest in one call."""
        found: dict[str, tuple[float, ...]] = {}
        with self._lock:
            for text in texts:
                cached = self._vectors.get(text)
                if cached is not None:
                    self._vectors.move_to_end(text)
                    found[text] = cached
            missing = list(dict.fromkeys(t for t in texts if t not in found))
            self.hits += len(texts) - sum(1 for t in texts if t not in found)
            self.misses += sum(1 for t in texts if t not in found)
        if missing:
            fresh = self.inner.embed(missing)
            with self._lock:
                for text, vector in zip(missing, fresh, strict=True):
                    found[text] = tuple(float(x) for x in vector)
                    if self.max_entries > 0:
                        self._vectors[text] = found[text]
                        self._vectors.move_to_end(text)
                while len(self._vectors) > self.max_entries:
                    self._vectors.popitem(last=False)
        return [list(found[text]) for text in texts]

    def __len__(self) -> int:
        return len(self._vectors)
