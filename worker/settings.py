"""Configuration: one typed object, read from SUPARAG_* variables and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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
    embedding_provider: str = Field(
        default="sentence-transformers",
        description="`sentence-transformers` (local) or `openai` (any OpenAI-compatible server).",
    )
    embedding_model: str | None = Field(
        default=None,
        description="Model name or path. Unset: all-MiniLM-L6-v2 (local) or "
        "text-embedding-3-small (openai, asked for 384 dimensions).",
    )
    openai_api_key: str | None = Field(
        default=None, description="API key for the openai provider (else OPENAI_API_KEY)."
    )
    openai_base_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server (else OPENAI_BASE_URL, else OpenAI).",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
