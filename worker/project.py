"""`suparag init`: put suparag's migrations into a Supabase CLI project folder."""

from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import ConfigError
from worker.schema import discover, edge_functions_dir, supabase_config


@dataclass
class InitResult:
    """Files written, and files left alone because they were already there."""

    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)


def init_project(directory: Path, *, edge_functions: bool = True) -> InitResult:
    """Write the migrations (and a config.toml if there is none) under directory/supabase,
    and with edge_functions the Supabase Edge Function `embed` (gte-small, for queries
    without a Python service: docs/edge-functions.md) under supabase/functions.

    Never overwrites: a migration file with the same name but other content is
    an error, since landed migrations must not change; a function file that is
    already there is kept as it is (it is the project's code to edit).
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
    if edge_functions:
        source = edge_functions_dir()
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            dest = target / "functions" / path.relative_to(source)
            if dest.exists():
                result.unchanged.append(dest)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            result.written.append(dest)
    return result
