"""The model providers the configuration names, built from `Settings`.

Keys and server URLs come only from the settings (which resolve
SUPARAG_OPENAI_* and then OPENAI_*); the providers themselves read nothing
from the environment.
"""

from __future__ import annotations

from worker.errors import ConfigError
from worker.models.base import (
    DEFAULT_MODEL,
    DEFAULT_OPENAI_MODEL,
    LLM,
    OPENAI_PREFIX,
    Embedder,
)
from worker.models.llm import OpenAIChat
from worker.models.local import SentenceTransformerEmbedder
from worker.models.onnx import BACKENDS, ONNX_INT8, TORCH, OnnxInt8Embedder, split_backend
from worker.models.openai import OpenAIEmbedder
from worker.settings import Settings


def make_embedder(provider: str, model: str | None = None, *,
                  settings: Settings | None = None, backend: str | None = None,
                  dimensions: int | None = None) -> Embedder:
    """The embedder of provider; model None is the provider's default.

    The openai provider's key and server come from settings (None: the
    settings as the environment and `.env` give them now); the local
    provider's backend is backend, else the settings' (`torch`, `onnx-int8`);
    dimensions is the width to ask an OpenAI model for (an embedding space's, issue 10).
    """
    kind = provider.strip().lower()
    if kind == "sentence-transformers":
        settings = settings or Settings()
        chosen = (backend or settings.embedding_backend).strip().lower()
        if chosen == TORCH:
            return SentenceTransformerEmbedder(model or DEFAULT_MODEL)
        if chosen == ONNX_INT8:
            return OnnxInt8Embedder(model or DEFAULT_MODEL, cache=settings.model_cache)
        raise ConfigError(
            f"unknown embedding backend {chosen!r}: set SUPARAG_EMBEDDING_BACKEND to "
            + " or ".join(repr(b) for b in BACKENDS)
        )
    if kind == "openai":
        settings = settings or Settings()
        return OpenAIEmbedder(model or DEFAULT_OPENAI_MODEL, api_key=settings.openai_api_key,
                              base_url=settings.openai_base_url,
                              max_tokens=settings.embedding_max_tokens, dimensions=dimensions)
    raise ConfigError(
        f"unknown embedding provider {provider!r}: set SUPARAG_EMBEDDING_PROVIDER to "
        "'sentence-transformers' or 'openai'"
    )


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedder SUPARAG_EMBEDDING_PROVIDER and SUPARAG_EMBEDDING_MODEL name."""
    return make_embedder(settings.embedding_provider, settings.embedding_model,
                         settings=settings)


def embedder_for_model(stored_name: str, settings: Settings) -> Embedder:
    """The embedder that made vectors stored as stored_name (to embed queries alike).

    `openai/<model>` is that model on the configured OpenAI(-compatible)
    server; `<model>@onnx-int8` a local model on the int8 backend; any other
    name a sentence-transformers model on torch.
    """
    if stored_name.startswith(OPENAI_PREFIX):
        return make_embedder("openai", stored_name.removeprefix(OPENAI_PREFIX),
                             settings=settings)
    model, backend = split_backend(stored_name)
    return make_embedder("sentence-transformers", model, settings=settings, backend=backend)


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
