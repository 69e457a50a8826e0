"""What passes from stage to stage: a file found, the documents read from it, and what
was skipped or noted on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceFile:
    """A file to read, and the stable name its documents get."""

    path: Path
    source: str


@dataclass(frozen=True)
class Skipped:
    """A file, folder or record that was not ingested, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class Note:
    """Something changed or guessed on the way in (e.g. an encoding)."""

    source: str
    message: str


@dataclass(frozen=True)
class Document:
    """One document as read from a file, before the run's options are applied."""

    source: str
    title: str
    content: str
    metadata: dict[str, Any]


@dataclass
class Parsed:
    """What one file gave."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
