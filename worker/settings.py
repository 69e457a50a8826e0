"""Configuration: one typed object, read from SUPARAG_* variables and `.env`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything suparag reads from the environment.

    Each field is `SUPARAG_<NAME>` in the environment or in `.env` in the
    working directory. Secrets are never logged.
    """

    model_config = SettingsConfigDict(
        env_prefix="SUPARAG_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    db_url: str | None = Field(
        default=None,
        description="PostgreSQL URL of the database to use. Unset: the local `suparag dev` server.",
    )
    home: Path = Field(
        default=Path(".suparag"),
        description="Where the local stack keeps its data, logs and keys.",
    )
    db_port: int = Field(
        default=54322, description="Port of the local PostgreSQL (Supabase CLI's default)."
    )
    api_port: int | None = Field(
        default=None,
        description="Port of the local Supabase-compatible API (`suparag dev`). Unset: one "
        "below the database port, i.e. 54321 by default, as `supabase start`.",
    )
    embedding_provider: str = Field(
        default="sentence-transformers",
        description="`sentence-transformers` (local) or `openai` (any OpenAI-compatible server).",
    )
    embedding_model: str | None = Field(
        default=None,
        description="Model name or path. Unset: all-MiniLM-L6-v2 (local) or "
        "text-embedding-3-small (openai, asked for 384 dimensions).",
    )
    embedding_backend: str = Field(
        default="torch",
        description="How the local provider runs its model: `torch` (sentence-transformers, "
        "fp32) or `onnx-int8` (ONNX Runtime, int8 weights; vectors stored as "
        "`<model>@onnx-int8`). See the README's measurements.",
    )
    model_cache: Path = Field(
        default=Path("~/.cache/suparag/models"),
        description="Where `suparag models quantize` keeps the int8 exports the `onnx-int8` "
        "backend uses.",
    )
    embedding_max_tokens: int | None = Field(
        default=None, ge=1,
        description="Tokens one input of the openai provider may hold (the model's window). "
        "Unset: OpenAI's own models as known, else 512. A server running a small model "
        "(all-MiniLM-L6-v2 reads 256) needs it.",
    )
    openai_api_key: str | None = Field(
        default=None, description="API key for the openai provider (else OPENAI_API_KEY)."
    )
    openai_base_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server (else OPENAI_BASE_URL, else OpenAI).",
    )
    llm_model: str | None = Field(
        default=None,
        description="Chat model that writes answers (e.g. gpt-4o-mini). Unset: answers are "
        "extractive (the best passages, quoted with citations).",
    )
    llm_base_url: str | None = Field(
        default=None,
        description="Base URL of the OpenAI-compatible chat server (else SUPARAG_OPENAI_BASE_URL, "
        "else OPENAI_BASE_URL, else OpenAI).",
    )
    llm_api_key: str | None = Field(
        default=None,
        description="API key for the chat server (else SUPARAG_OPENAI_API_KEY, else "
        "OPENAI_API_KEY).",
    )
    llm_timeout_seconds: float = Field(
        default=60.0, description="Give up on a chat request that is silent this long."
    )
    answer_broadcast: bool = Field(
        default=True,
        description="Also send each answer on its asker's private Realtime Broadcast topic "
        "answers:<uid> (delta, done, failed events). The answers row is written either way.",
    )
    wake_secret: str | None = Field(
        default=None,
        description="Secret a wake-up POST must carry (header X-Suparag-Wake-Secret): the "
        "value of the Vault secret `suparag_wake_secret`, which the pg_net trigger sends. "
        "Unset: wake-ups need none (never logged).",
    )
    # Supabase's own names, without the SUPARAG_ prefix, as the dashboard and CLI print them.
    supabase_url: str | None = Field(
        default=None, validation_alias="SUPABASE_URL",
        description="Project URL (https://<ref>.supabase.co). With a service key, `suparag "
        "worker` also wakes on Realtime postgres_changes of the embedding queue.",
    )
    supabase_service_role_key: str | None = Field(
        default=None, validation_alias="SUPABASE_SERVICE_ROLE_KEY",
        description="The project's service_role key, for the Realtime wake-ups (never logged).",
    )
    supabase_jwt_secret: str | None = Field(
        default=None, validation_alias="SUPABASE_JWT_SECRET",
        description="The project's JWT secret, with which `suparag mcp` verifies users' "
        "access tokens (HS256). Unset: the local project's; with SUPABASE_URL, asymmetric "
        "tokens are checked against the project's JWKS.",
    )
    supabase_anon_key: str | None = Field(
        default=None, validation_alias="SUPABASE_ANON_KEY",
        description="The project's anon key: `suparag serve` accepts it (and the "
        "service_role key) as the `apikey` header, as Supabase's gateway does.",
    )
    supabase_jwks_url: str | None = Field(
        default=None, validation_alias="SUPABASE_JWKS_URL",
        description="Where the project's signing keys are (asymmetric JWTs). Unset: "
        "<SUPABASE_URL>/auth/v1/.well-known/jwks.json when SUPABASE_URL is set.",
    )
    serve_host: str = Field(default="0.0.0.0", description="`suparag serve`'s address.")
    serve_port: int = Field(
        default_factory=lambda: int(os.environ.get("PORT") or 8000),
        description="`suparag serve`'s port (else PORT, as container platforms set it, "
        "else 8000).",
    )
    edge_rate_limit: int = Field(
        default=600, ge=1,
        description="Embed and search requests per user per minute on `suparag serve` "
        "(429 with Retry-After beyond; the service_role is not limited).",
    )
    edge_cache_entries: int = Field(
        default=4096, ge=0,
        description="Query vectors kept per model (LRU) by `suparag serve`; 0 turns it off.",
    )
    edge_cors_origins: str = Field(
        default="*", description="Origins allowed to call `suparag serve` from a browser, "
        "comma-separated (`*`: any).",
    )
    mcp_token: str | None = Field(
        default=None,
        description="A user's access token for `suparag mcp` over stdio (the process then "
        "answers as that user).",
    )

    @model_validator(mode="after")
    def _openai_client_names(self) -> Settings:
        """OPENAI_API_KEY / OPENAI_BASE_URL, the openai client's own names, as the last resort.

        They count only when SUPARAG_OPENAI_* is unset or empty in the environment
        and in `.env`, and only from the process environment, as the client reads
        them. (An AliasChoices would let a bare OPENAI_* in the environment beat a
        SUPARAG_OPENAI_* in `.env`: pydantic-settings ranks sources before names.)
        """
        self.openai_api_key = self.openai_api_key or os.environ.get("OPENAI_API_KEY") or None
        self.openai_base_url = self.openai_base_url or os.environ.get("OPENAI_BASE_URL") or None
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
