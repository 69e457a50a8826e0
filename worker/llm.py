"""Chat models that write answers, behind one small interface.

An `LLM` names its model and streams a reply to a list of chat messages:
text deltas as they arrive, then (if the server reports it) one `Usage`.
`OpenAIChat` speaks OpenAI's `/v1/chat/completions` with `stream=True`, to
OpenAI or any compatible server (`base_url`). The openai package loads inside
the provider, so importing this module stays instant.

Errors are `LLMError` (a SuparagError): the answer worker records the message
on the answer and retries the question later, so the client does not retry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol, cast

from worker.errors import ConfigError, SuparagError

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam

    from worker.settings import Settings

OPENAI_URL = "https://api.openai.com/v1"


class LLMError(SuparagError):
    """The chat model failed, timed out or refused the request (server and reason named)."""


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


class OpenAIChat:
    """OpenAI's chat completions API, streamed, or any server that speaks it."""

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_seconds: float = 60.0, temperature: float = 0.2) -> None:
        self.name = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if key is None and self.base_url == OPENAI_URL:
            raise ConfigError("answering with OpenAI needs an API key: set SUPARAG_LLM_API_KEY "
                              "(or OPENAI_API_KEY), or SUPARAG_LLM_BASE_URL for another server")
        # Many self-hosted servers need no key, but the client insists on one.
        self._api_key = key or "unused"
        self.timeout_seconds = timeout_seconds
        self.temperature = temperature

    @cached_property
    def _client(self) -> openai.OpenAI:
        import openai

        # No client retries: a failed answer is retried by the job queue, with backoff.
        return openai.OpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0,
                             timeout=self.timeout_seconds)

    def stream(self, messages: Sequence[Message]) -> Iterator[str | Usage]:
        import openai

        server = self.base_url.rstrip("/")
        wire = [cast("ChatCompletionMessageParam", {"role": m.role, "content": m.content})
                for m in messages]
        try:
            chunks = self._client.chat.completions.create(
                model=self.name,
                messages=wire,
                stream=True,
                stream_options={"include_usage": True},
                temperature=self.temperature,
            )
            for chunk in chunks:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content
                if chunk.usage is not None:
                    yield Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        except openai.APITimeoutError as exc:
            raise LLMError(f"{server} did not answer within {self.timeout_seconds:.0f} s "
                           f"(model {self.name}); raise SUPARAG_LLM_TIMEOUT_SECONDS or try "
                           "again later") from exc
        except openai.APIStatusError as exc:
            detail = " ".join(str(exc.message).split())[:300]
            raise LLMError(f"{server} answered HTTP {exc.status_code} for model {self.name}: "
                           f"{detail}") from exc
        except openai.APIError as exc:
            raise LLMError(f"chat request to {server} failed (model {self.name}): {exc}; "
                           "check SUPARAG_LLM_BASE_URL and that the server is up") from exc


def llm_from_settings(settings: Settings) -> LLM | None:
    """The chat model SUPARAG_LLM_* configure, or None (extractive answers)."""
    if not settings.llm_model:
        return None
    return OpenAIChat(
        settings.llm_model,
        api_key=settings.llm_api_key or settings.openai_api_key,
        base_url=settings.llm_base_url or settings.openai_base_url,
        timeout_seconds=settings.llm_timeout_seconds,
    )
