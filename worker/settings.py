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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
