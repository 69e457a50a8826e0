"""`suparag init`: put suparag's migrations into a Supabase CLI project folder."""

from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import ConfigError
from worker.schema import discover, supabase_config


@dataclass
class InitResult:
    """Files written, and files left alone because they were already there."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)


def init_project(directory: Path) -> InitResult:
    """Write the migrations (and a config.toml if there is none) under directory/supabase.

    Never overwrites: a migration file with the same name but other content is
    an error, since landed migrations must not change.
    """
    target = directory / "supabase"
    migrations = target / "migrations"
    migrations.mkdir(parents=True, exist_ok=True)
    result = InitResult()
    for migration in discover():
        dest = migrations / migration.path.name
        if dest.exists():
            if not filecmp.cmp(dest, migration.path, shallow=False):
                raise ConfigError(
                    f"{dest} exists with different content; migrations are never edited "
                    "once applied. Move it aside if it is yours, then run init again."
                )
            result.unchanged.append(dest)
            continue
        shutil.copyfile(migration.path, dest)
        result.written.append(dest)
    config = target / "config.toml"
    if config.exists():
        result.unchanged.append(config)
    else:
        shutil.copyfile(supabase_config(), config)
        result.written.append(config)
    return result
