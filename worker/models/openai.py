"""OpenAI's embeddings API, or any server that speaks its `/v1/embeddings`.

Vectors are stored under `openai/<model>`. Tokens are counted with tiktoken
when it loads, else estimated (see `estimate_tokens`). Requests are batched
within the server's limits and retried on throttling and outages. The
openai package loads on first use, not on import.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from worker.backoff import backoff_seconds
from worker.errors import (
    ConfigError,
    EmbeddingJobError,
    EmbeddingServiceError,
    EmbeddingServiceUnavailable,
)
from worker.models._http import display_url, openai_client, retry_after_seconds, server_detail
from worker.models.base import (
    DEFAULT_OPENAI_DIMENSIONS,
    DEFAULT_OPENAI_MODEL,
    OPENAI_PREFIX,
    OPENAI_URL,
)

if TYPE_CHECKING:
    import openai

log = logging.getLogger("suparag.models")

@dataclass(frozen=True)
class _Item:
    """One vector of an answer, and its place among the inputs (None: the server left it out)."""

    index: int | None
    embedding: list[float]


@dataclass(frozen=True)
class _Answer:
    """An embeddings answer: its vectors and its `usage` (None when the server sends none)."""

    data: list[_Item]
    usage: Any

    @classmethod
    def from_json(cls, body: Any) -> _Answer:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(
                isinstance(item, dict) and isinstance(item.get("embedding"), list)
                for item in data):
            raise EmbeddingServiceError(
                "the embeddings server answered without a `data` list of vectors: it is not a "
                "compatible embeddings API; check SUPARAG_OPENAI_BASE_URL")
        usage = body.get("usage")
        return cls(data=[_Item(item.get("index"), item["embedding"]) for item in data],
                   usage=_Usage(usage.get("prompt_tokens")) if isinstance(usage, dict)
                   else None)


@dataclass(frozen=True)
class _Usage:
    prompt_tokens: Any


#: Client-side statuses worth asking again (request timeout, rate limit); every 5xx is too.
_RETRIED_STATUSES = frozenset({408, 429})

# Token counts without tiktoken. tiktoken downloads its BPE files on first use,
# which an offline worker cannot do, so without them tokens are estimated as
# ceil(UTF-8 bytes / 3). Why that is safe: every token of a byte-level BPE
# (cl100k_base, o200k_base) covers at least one byte, so the true count is at
# most the byte count, i.e. at most three times the estimate. Prose runs about
# 4 bytes a token and code about 3, so on ordinary text the estimate is high
# and chunks come out smaller than max_tokens, not larger. Only odd text
# (digits between spaces, rare symbols) can reach 3x, and a 512-unit chunk is
# then still at most 1,536 tokens, far inside the models' 8,191: no input is
# ever rejected or truncated. The per-request budget counts bytes, a strict
# bound. (A plain byte count would be strict everywhere, but it would make
# chunks a quarter of the size, and the chunker's "a join costs one token"
# arithmetic holds for "\n\n" only with a divisor of 2 or more.)
_BYTES_PER_TOKEN = 3

#: Input windows of OpenAI's embedding models, in tokens (their model pages).
KNOWN_WINDOWS = {
    "text-embedding-3-small": 8191,
    "text-embedding-3-large": 8191,
    "text-embedding-ada-002": 8191,
}
#: Chunk size for a model whose window is larger: a good retrieval size.
DEFAULT_CHUNK_TOKENS = 512
#: Tokens a server may add to each input it counts ([CLS]/[SEP], BOS/EOS).
SPECIALS_ALLOWANCE = 2


def _stand_in_tokenizer(model: str) -> Any | None:
    """The packaged all-MiniLM-L6-v2 tokenizer, for a server that runs that model.

    A small model behind an OpenAI-compatible server is counted with its own
    tokenizer when one is available offline, so chunks fit its real window
    (issue 16: 163 of 752 estimated-512 chunks overflowed MiniLM's 256).
    """
    from worker.models.base import DEFAULT_MODEL
    from worker.models.local import _packaged_model_path
    from worker.models.tokens import FastTokenizer

    if model.rsplit("/", 1)[-1].lower() != DEFAULT_MODEL.rsplit("/", 1)[-1].lower():
        return None
    path = _packaged_model_path(DEFAULT_MODEL)
    if path is None:
        return None
    from pathlib import Path

    return FastTokenizer.of_folder(Path(path))


def estimate_tokens(text: str) -> int:
    """ceil(UTF-8 bytes / 3): the token count used when tiktoken cannot load."""
    return -(-len(text.encode("utf-8")) // _BYTES_PER_TOKEN)


def split_estimated(text: str, size: int) -> list[str]:
    """text cut into runs of at most size estimated tokens, at whitespace where possible.

    Cuts fall between characters, never inside one; a run breaks at its last
    whitespace if that keeps at least half the run.
    """
    data = text.encode("utf-8")
    limit = max(1, size) * _BYTES_PER_TOKEN
    runs = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and end > start and (data[end] & 0xC0) == 0x80:
            end -= 1  # not inside a multi-byte character
        if end == start:  # size smaller than one character: take the character
            end = start + 1
            while end < len(data) and (data[end] & 0xC0) == 0x80:
                end += 1
        if end < len(data):
            space = max(data.rfind(b, start + limit // 2, end) for b in (b" ", b"\n", b"\t"))
            if space > start:
                end = space
        run = data[start:end].decode("utf-8").strip()
        if run:
            runs.append(run)
        start = end
    return runs


class OpenAIEmbedder:
    """OpenAI's embeddings API, or any server that speaks it (`base_url`, else OpenAI's).

    Stored model names are `openai/<model>`. text-embedding-3-* models are
    asked for 384 dimensions (the column's width); other models are sent as
    they are, and their dimension is learned from the first response unless
    given. Inputs go in requests of at most `max_batch_inputs` texts and
    `max_batch_tokens` tokens (OpenAI: 2,048 and 300,000). 408, 429 and 5xx
    answers and lost connections are retried with exponential backoff and
    jitter, waiting what `retry-after-ms` / `Retry-After` ask for (up to
    `max_retry_wait_seconds`), `max_attempts` times in all; other errors are
    not retried.

    Chunks hold at most `max_tokens`: as given (SUPARAG_EMBEDDING_MAX_TOKENS:
    the model's real window), else 512 for OpenAI's models (a good retrieval
    size; they read 8,191), else the window of the stand-in tokenizer (the
    packaged MiniLM's, for a server running all-MiniLM-L6-v2), else 512.
    When the server reports usage, its count is checked: an input the server
    counted over `max_tokens` fails its document loudly (EmbeddingJobError)
    rather than being stored as if it had been embedded whole.
    """

    def __init__(
        self,
        model: str = DEFAULT_OPENAI_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        dimensions: int | None = None,
        max_tokens: int | None = None,
        max_batch_inputs: int = 2048,
        max_batch_tokens: int = 300_000,
        max_attempts: int = 5,
        backoff_base_seconds: float = 0.5,
        backoff_max_seconds: float = 20.0,
        max_retry_wait_seconds: float = 60.0,
        timeout_seconds: float = 60.0,
    ) -> None:
        if (max_attempts < 1 or max_batch_inputs < 1 or max_batch_tokens < 1
                or (max_tokens is not None and max_tokens < 1)):
            raise ValueError("max_attempts, max_batch_inputs, max_batch_tokens and max_tokens "
                             "must be at least 1")
        if not api_key:
            raise ConfigError(
                "the openai embedding provider needs an API key: set SUPARAG_OPENAI_API_KEY "
                "(or OPENAI_API_KEY)"
            )
        self.model = model
        self.name = OPENAI_PREFIX + model
        self._api_key = api_key
        self.base_url = base_url or OPENAI_URL
        self.server = display_url(self.base_url)
        # text-embedding-3-* shorten to any width asked for; older and
        # third-party models have one width and reject the parameter.
        self._send_dimensions = model.rsplit("/", 1)[-1].startswith("text-embedding-3")
        self._dimensions = dimensions or (DEFAULT_OPENAI_DIMENSIONS if self._send_dimensions
                                          else None)
        self._max_tokens_given = max_tokens
        self.max_batch_inputs = max_batch_inputs
        self.max_batch_tokens = max_batch_tokens
        self.max_attempts = max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_retry_wait_seconds = max_retry_wait_seconds
        self.timeout_seconds = timeout_seconds

    @cached_property
    def _client(self) -> openai.OpenAI:
        # Retries are ours (see _create).
        return openai_client(api_key=self._api_key, base_url=self.base_url,
                             timeout_seconds=self.timeout_seconds,
                             needed_by="the openai embedding provider")

    def load(self) -> None:
        self._client  # noqa: B018  # builds the client; makes no request

    @cached_property
    def _stand_in(self) -> Any | None:
        """A local tokenizer of the same model (worker.models.tokens.FastTokenizer), if any."""
        return None if self._encoding is not None else _stand_in_tokenizer(self.model)

    @cached_property
    def _encoding(self) -> Any | None:
        """tiktoken's encoding for an OpenAI model, when tiktoken and its BPE file load."""
        try:
            import tiktoken
        except ImportError:
            return None
        try:
            return tiktoken.encoding_for_model(self.model.rsplit("/", 1)[-1])
        except Exception:  # not an OpenAI model (KeyError), or offline with no cached BPE
            return None

    @property
    def dimensions(self) -> int:
        """384 for text-embedding-3-*; else as given, or as the server answers (one probe)."""
        if self._dimensions is None:
            return len(self.embed(["dimension probe"])[0])  # also records it
        return self._dimensions

    @cached_property
    def max_tokens(self) -> int:
        base = self.model.rsplit("/", 1)[-1]
        if self._max_tokens_given is not None:
            return self._max_tokens_given
        if base in KNOWN_WINDOWS:
            return min(DEFAULT_CHUNK_TOKENS, KNOWN_WINDOWS[base])
        if self._stand_in is not None:
            return int(self._stand_in.window)
        return DEFAULT_CHUNK_TOKENS

    def count_tokens(self, text: str) -> int:
        """Exact with tiktoken or the stand-in tokenizer; else estimate_tokens (see its note)."""
        if self._encoding is None:
            if self._stand_in is not None:
                return int(self._stand_in.count(text))
            return estimate_tokens(text)
        return len(self._encoding.encode(text, disallowed_special=()))

    def split_tokens(self, text: str, size: int) -> list[str]:
        if self._encoding is None:
            if self._stand_in is not None:
                return list(self._stand_in.split(text, size))
            return split_estimated(text, size)
        ids = self._encoding.encode(text, disallowed_special=())
        _, offsets = self._encoding.decode_with_offsets(ids)
        runs, first = [], 0
        while first < len(ids):
            last = min(first + size, len(ids))
            while True:
                end = offsets[last] if last < len(ids) else len(text)
                run = text[offsets[first]:end]
                # A substring can tokenize differently at its edges: shrink until it fits.
                if last - first <= 1 or self.count_tokens(run) <= size:
                    break
                last -= 1
            runs.append(run.strip())
            first = last
        return [r for r in runs if r]

    def request_tokens(self, text: str) -> int:
        """What text costs against max_batch_tokens: exact, or its UTF-8 bytes (an upper bound)."""
        if self._encoding is None:
            return len(text.encode("utf-8"))
        return len(self._encoding.encode(text, disallowed_special=()))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for batch in self._batches(texts):
            vectors.extend(self._embed_batch(batch))
        return vectors

    def _batches(self, texts: Sequence[str]) -> Iterator[list[str]]:
        """Consecutive runs of texts within the per-request input and token limits."""
        batch: list[str] = []
        used = 0
        for text in texts:
            cost = self.request_tokens(text)
            if batch and (len(batch) >= self.max_batch_inputs
                          or used + cost > self.max_batch_tokens):
                yield batch
                batch, used = [], 0
            batch.append(text)
            used += cost
        if batch:
            yield batch

    def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        response = self._create(batch)
        if self._over_window(batch, response) and len(batch) > 1:
            # The server counts more than we do: ask for each input alone to find the one.
            return [v for text in batch for v in self._embed_batch([text])]
        data = list(response.data)
        # The API numbers its answers; put them back in input order.
        if all(getattr(item, "index", None) is not None for item in data):
            data.sort(key=lambda item: item.index or 0)
            indexes = [item.index or 0 for item in data]
        else:
            indexes = list(range(len(data)))
        if indexes != list(range(len(batch))):
            raise EmbeddingServiceError(
                f"{self.server} answered {len(data)} vectors (indexes {indexes[:10]}) for "
                f"{len(batch)} inputs: it is not a compatible embeddings API"
            )
        vectors = [list(item.embedding) for item in data]
        widths = sorted({len(v) for v in vectors})
        if len(widths) > 1:
            raise EmbeddingServiceError(
                f"{self.server} answered vectors of different widths {widths} for {self.model!r}"
            )
        if self._dimensions is None:
            self._dimensions = widths[0]
        elif widths[0] != self._dimensions:
            hint = ("it ignores `dimensions`; use a model that makes "
                    f"{self._dimensions}-dimensional vectors" if self._send_dimensions
                    else "pass the model's real dimension")
            raise EmbeddingServiceError(
                f"{self.server} answered {widths[0]}-dimensional vectors for {self.model!r}, "
                f"expected {self._dimensions}: {hint}"
            )
        return vectors

    def _over_window(self, batch: list[str], response: _Answer) -> bool:
        """Whether the server counted more tokens than batch may hold; raises for one input.

        A server cuts what exceeds its model's window without saying so; its
        usage count is the one sign. Within the allowance for special tokens
        all is well. Over it, one input over max_tokens is an error of its
        document (EmbeddingJobError, so the worker fails that document alone).
        """
        usage = getattr(response, "usage", None)
        counted = getattr(usage, "prompt_tokens", None)
        if not isinstance(counted, int):
            return False  # the server reports no usage: nothing to check against
        ours = sum(self.count_tokens(t) for t in batch)
        if counted <= ours + SPECIALS_ALLOWANCE * len(batch):
            return False
        if len(batch) > 1:
            log.warning("%s counted %d tokens where we counted %d; checking the %d inputs one "
                        "by one", self.server, counted, ours, len(batch))
            return True
        if counted <= self.max_tokens + SPECIALS_ALLOWANCE:
            return False
        raise EmbeddingJobError(
            f"{self.server} counted {counted} tokens in one chunk of {self.model!r}, which reads "
            f"at most {self.max_tokens}: the server would cut it and the rest would never be "
            "embedded. Set SUPARAG_EMBEDDING_MAX_TOKENS to the model's real window"
        )

    def _create(self, batch: list[str]) -> _Answer:
        """One embeddings request, retried on 408/429/5xx and lost connections.

        The body is read as plain JSON: the client's typed parse builds a pydantic
        object per float and took ~1 s per 40 vectors, most of a worker's time
        behind a fast server (issue 17, `suparag bench queue`).
        """
        import openai

        extra: dict[str, Any] = {"dimensions": self._dimensions} if self._send_dimensions else {}
        attempt = 0
        while True:
            attempt += 1
            try:
                raw = self._client.embeddings.with_raw_response.create(
                    model=self.model, input=batch, encoding_format="float", **extra
                )
                return _Answer.from_json(raw.http_response.json())
            except openai.APIStatusError as exc:
                wait = self._retry_wait(exc, attempt)
                reason = f"HTTP {exc.status_code}"
            except openai.APIConnectionError as exc:
                if attempt >= self.max_attempts:
                    raise EmbeddingServiceUnavailable(
                        f"cannot reach {self.server} after {attempt} attempts ({exc}): check "
                        "SUPARAG_OPENAI_BASE_URL and that the server is up"
                    ) from exc
                wait = self._backoff(attempt)
                reason = str(exc)
            log.warning("%s answered %s; retry %d of %d in %.1f s", self.server, reason,
                        attempt, self.max_attempts - 1, wait)
            time.sleep(wait)

    def _retry_wait(self, exc: openai.APIStatusError, attempt: int) -> float:
        """Seconds to wait before asking again; raises when the error is final."""
        status, detail = exc.status_code, server_detail(exc)
        if status in (401, 403):
            raise ConfigError(
                f"{self.server} refused the API key (HTTP {status}: {detail}): set "
                "SUPARAG_OPENAI_API_KEY (or OPENAI_API_KEY) to a key it accepts"
            ) from exc
        if status == 404:
            raise ConfigError(
                f"{self.server} has no embeddings for {self.model!r} (HTTP 404: {detail}): check "
                "SUPARAG_OPENAI_BASE_URL (it usually ends in /v1) and SUPARAG_EMBEDDING_MODEL"
            ) from exc
        if status < 500 and status not in _RETRIED_STATUSES:
            raise EmbeddingServiceError(
                f"{self.server} rejected the embedding request for {self.model!r} "
                f"(HTTP {status}: {detail}); not retried"
            ) from exc
        if attempt >= self.max_attempts:
            raise EmbeddingServiceUnavailable(
                f"{self.server} answered HTTP {status} ({detail}) to {attempt} attempts; "
                "gave up. Try again later, or check the service's status"
            ) from exc
        asked = retry_after_seconds(exc.response.headers)
        if asked is None:
            return self._backoff(attempt)
        if asked > self.max_retry_wait_seconds:
            raise EmbeddingServiceUnavailable(
                f"{self.server} answered HTTP {status} ({detail}) and asks to wait {asked:.0f} s "
                f"(more than {self.max_retry_wait_seconds:.0f} s): try again later"
            ) from exc
        return asked

    def _backoff(self, attempt: int) -> float:
        """The shared backoff rule (worker.backoff), on this embedder's base and cap."""
        return backoff_seconds(attempt, base=self.backoff_base_seconds,
                               cap=self.backoff_max_seconds)
