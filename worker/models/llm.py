"""OpenAI's chat completions API, streamed: the chat model that writes answers.

`OpenAIChat` speaks `/v1/chat/completions` with `stream=True`, to OpenAI or
any compatible server (`base_url`). The openai package loads on first use,
not on import.

Errors are `LLMError` (a SuparagError): the answer worker records the message
on the answer and retries the question later, so the client does not retry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, cast

from worker.errors import ConfigError, LLMError
from worker.models._http import display_url, openai_client, server_detail
from worker.models.base import OPENAI_URL, Message, Usage

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionMessageParam


class OpenAIChat:
    """OpenAI's chat completions API, streamed, or any server that speaks it (`base_url`)."""

    def __init__(self, model: str, *, api_key: str | None = None, base_url: str | None = None,
                 timeout_seconds: float = 60.0, temperature: float = 0.2) -> None:
        self.name = model
        self.base_url = base_url or OPENAI_URL
        if not api_key and self.base_url == OPENAI_URL:
            raise ConfigError("answering with OpenAI needs an API key: set SUPARAG_LLM_API_KEY "
                              "(or OPENAI_API_KEY), or SUPARAG_LLM_BASE_URL for another server")
        # Many self-hosted servers need no key, but the client insists on one.
        self._api_key = api_key or "unused"
        self.server = display_url(self.base_url)
        self.timeout_seconds = timeout_seconds
        self.temperature = temperature

    @cached_property
    def _client(self) -> openai.OpenAI:
        return openai_client(api_key=self._api_key, base_url=self.base_url,
                             timeout_seconds=self.timeout_seconds,
                             needed_by="answering with a chat model")

    def stream(self, messages: Sequence[Message]) -> Iterator[str | Usage]:
        import openai

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
            raise LLMError(f"{self.server} did not answer within {self.timeout_seconds:.0f} s "
                           f"(model {self.name}); raise SUPARAG_LLM_TIMEOUT_SECONDS or try "
                           "again later") from exc
        except openai.APIStatusError as exc:
            raise LLMError(f"{self.server} answered HTTP {exc.status_code} for model "
                           f"{self.name}: {server_detail(exc)}") from exc
        except openai.APIError as exc:
            raise LLMError(f"chat request to {self.server} failed (model {self.name}): {exc}; "
                           "check SUPARAG_LLM_BASE_URL and that the server is up") from exc
