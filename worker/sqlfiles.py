"""Where the SQL lives: inside the installed wheel, or in a source checkout.

A wheel carries `supabase/migrations`, `supabase/config.toml` and `sql/` under
`worker/_data/` (see pyproject's force-include); an editable install or a
checkout reads them from the repository. Both resolve to the same files.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def _pick(packaged: Path, checkout: Path) -> Path:
    return packaged if packaged.exists() else checkout


def migrations_dir() -> Path:
    """The deployable migrations, named as the Supabase CLI names them."""
    return _pick(_PACKAGE / "_data" / "migrations", _CHECKOUT / "supabase" / "migrations")


def supabase_config() -> Path:
    """The Supabase CLI `config.toml` that `suparag init` writes when none exists."""
    return _pick(_PACKAGE / "_data" / "config.toml", _CHECKOUT / "supabase" / "config.toml")


def standin_sql() -> Path:
    """The local-only SQL that makes plain PostgreSQL look like a Supabase database."""
    return _pick(_PACKAGE / "_data" / "sql", _CHECKOUT / "sql") / "supabase_standin.sql"
