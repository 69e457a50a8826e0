"""Stage 3: a file's text (or, for binary formats, its bytes) to documents, by its
extension.

Every format is one function chosen from one table: `read(file, text) -> Parsed`
for text formats, or `read_binary(file, data, progress) -> Parsed` for PDF,
Office and EPUB files, which are not decoded as text first. A reader gives each
document its title, content and the metadata the file itself carries (a JSON
record's, a PDF's page count); the pipeline adds `format`, `encoding` and `source`
afterwards, the same for every format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.ingest.formats.html import read_html
from worker.ingest.formats.office import read_office
from worker.ingest.formats.pdf import Progress, read_pdf
from worker.ingest.formats.records import read_json, read_jsonl
from worker.ingest.formats.text import read_markdown, read_plain, read_rst
from worker.ingest.items import Parsed, SourceFile

Reader = Callable[[SourceFile, str], Parsed]
#: A binary format's reader; it calls progress(done, total) as it goes (e.g. per page).
BinaryReader = Callable[[SourceFile, bytes, Progress], Parsed]


@dataclass(frozen=True)
class Format:
    """A reader (of text, or of bytes) and the name it is recorded under in
    `metadata.format`."""

    name: str
    read: Reader | None = None
    read_binary: BinaryReader | None = None


_MARKDOWN = Format("markdown", read_markdown)
_HTML = Format("html", read_html)
_JSONL = Format("jsonl", read_jsonl)

#: Extension (lower case) -> format.
FORMATS: dict[str, Format] = {
    ".md": _MARKDOWN, ".markdown": _MARKDOWN,
    ".txt": Format("text", read_markdown),  # titled like markdown: by its first heading
    ".rst": Format("rst", read_rst),
    ".html": _HTML, ".htm": _HTML,
    ".json": Format("json", read_json),
    ".jsonl": _JSONL, ".ndjson": _JSONL,
    ".pdf": Format("pdf", read_binary=read_pdf),
    ".docx": Format("docx", read_binary=read_office),
    ".pptx": Format("pptx", read_binary=read_office),
    ".xlsx": Format("xlsx", read_binary=read_office),
    ".epub": Format("epub", read_binary=read_office),
}
#: Any other extension: the text as is, if the file decodes as text.
OTHER = Format("text", read_plain)


def format_for(path: Path) -> Format:
    """The format a file is read as, by its extension."""
    return FORMATS.get(path.suffix.lower(), OTHER)
