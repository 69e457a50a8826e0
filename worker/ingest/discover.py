"""Stage 1: the files under the paths given, each with its source name, and what was
passed over (hidden names silently; unreadable and symlinked folders, and a file
reached twice, with a reason)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import NotFound
from worker.ingest.items import Skipped, SourceFile


@dataclass
class Discovery:
    """The files under the paths given, in order, and what was passed over."""

    files: list[SourceFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def discover(paths: Sequence[Path]) -> Discovery:
    """Files under paths, folders recursed in name order, hidden names left out.

    A file's source is its path relative to the parent of the argument it came
    from, with `/` separators: `suparag ingest ~/notes` names `~/notes/a/b.md`
    `notes/a/b.md`, wherever it runs from. A missing argument is an error
    before anything is read; problems below it are reported and skipped.
    """
    for path in paths:
        if not os.path.lexists(path):
            raise NotFound(f"no such file or folder: {path}")
    found = Discovery()
    seen: dict[str, str] = {}  # real path -> source, so a file is read once

    def add(path: Path, source: str) -> None:
        real = os.path.realpath(path)
        if real in seen:
            found.skipped.append(Skipped(source, f"same file as {seen[real]}"))
            return
        seen[real] = source
        found.files.append(SourceFile(path, source))

    for path in paths:
        absolute = Path(os.path.abspath(path))
        base = absolute.parent
        if absolute.is_dir():
            for file in _walk(absolute, found.skipped, base):
                add(file, _source(file, base))
        else:
            add(absolute, _source(absolute, base))
    return found


def _source(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _walk(folder: Path, skipped: list[Skipped], base: Path) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        skipped.append(Skipped(_source(folder, base) + "/", f"unreadable folder: {exc.strerror}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, skipped, base)
        elif entry.is_symlink() and entry.is_dir():
            # Not followed: a link can point back up the tree.
            skipped.append(Skipped(_source(path, base) + "/", "symlinked folder not followed; "
                                   "pass it as an argument to ingest it"))
        else:
            yield path
