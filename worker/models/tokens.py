"""A Hugging Face fast tokenizer read from its `tokenizer.json`, without transformers or torch.

The same tokenizer sentence-transformers uses for a model, so counts and
cuts agree with it; used by the int8 backend (worker.models.onnx) and, for a
small model behind an OpenAI-compatible server, by the openai provider.
"""

from __future__ import annotations

import json
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from worker.errors import ConfigError

#: Texts whose token counts a tokenizer keeps: about three batches in flight of chunks
#: (a claim of 32 budgets holds a few hundred), with room to spare.
COUNT_CACHE = 4096


def max_seq_length(folder: Path) -> int:
    """sentence-transformers' max_seq_length for the model in folder (512 if unstated)."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    return 512


class FastTokenizer:
    """Counts and cuts text in a model's tokens; window is what the model reads in one input."""

    def __init__(self, path: Path, *, max_seq_length: int) -> None:
        self.path = path
        self.max_seq_length = max_seq_length
        self._given: Any = None
        # The worker counts each chunk's text when it chunks, again when it sizes the model
        # calls, and the usage meter a third time: the last two are answered from here.
        # Thread-safe (chunking and model calls run on different threads).
        self._counts = lru_cache(maxsize=COUNT_CACHE)(self._count)

    @classmethod
    def copy_of(cls, tokenizer: Any, *, max_seq_length: int) -> FastTokenizer:
        """An independent copy of a loaded `tokenizers.Tokenizer` (a transformers fast
        tokenizer's `backend_tokenizer`): its padding and truncation are its own."""
        from tokenizers import Tokenizer

        copy = cls(Path("<copy>"), max_seq_length=max_seq_length)
        copy._given = Tokenizer.from_str(tokenizer.to_str())
        return copy

    @classmethod
    def of_folder(cls, folder: Path) -> FastTokenizer:
        return cls(folder / "tokenizer.json", max_seq_length=max_seq_length(folder))

    @cached_property
    def raw(self) -> Any:
        """The `tokenizers.Tokenizer`, loaded on first use with no padding or truncation."""
        if self._given is not None:
            self._given.no_padding()
            self._given.no_truncation()
            return self._given
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError("counting a local model's tokens needs tokenizers: "
                              "`pip install tokenizers`") from exc
        tokenizer = Tokenizer.from_file(str(self.path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        return tokenizer

    @cached_property
    def specials(self) -> int:
        """Tokens the model adds to every input ([CLS], [SEP])."""
        return len(self.raw.encode("", add_special_tokens=True).ids)

    @property
    def window(self) -> int:
        """Tokens of text one input may hold, special tokens excluded."""
        return self.max_seq_length - self.specials

    def count(self, text: str) -> int:
        """Tokens of text (special tokens excluded); the last COUNT_CACHE texts' counts are
        kept."""
        return self._counts(text)

    def _count(self, text: str) -> int:
        # The batch calls, with one text: `Tokenizer.encode` holds the GIL while it runs;
        # the batch calls let go of it. The worker chunks (counting most of that thread's
        # CPU) beside the model's lanes, whose threads need the GIL between two operators:
        # held by a count, it left them waiting with their cores idle (README, "Measured",
        # session 18). encode_batch_fast leaves out the offsets a count does not need.
        return len(self.raw.encode_batch_fast([text], add_special_tokens=False)[0].ids)

    def split(self, text: str, size: int) -> list[str]:
        """text cut into runs of at most size tokens (SentenceTransformerEmbedder's cut)."""
        offsets = self.raw.encode_batch([text], add_special_tokens=False)[0].offsets
        runs = []
        for first in range(0, len(offsets), size):
            start = offsets[first][0]
            end = offsets[first + size][0] if first + size < len(offsets) else len(text)
            runs.append(text[start:end].strip())
        return [r for r in runs if r]
