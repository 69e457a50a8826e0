"""Word, PowerPoint, Excel and EPUB files to markdown through Microsoft's markitdown.

markitdown (MIT) turns each into the markdown the chunker already splits at
headings: Word headings become `#` lines (through mammoth), each sheet of a
workbook a `## Sheet` heading over a markdown table, each EPUB chapter its HTML
as markdown. A deck's `<!-- Slide number: N -->` comments become the page
markers PDFs use, so a chunk keeps to one slide and its citation names it. Only
the converters are used, not `MarkItDown()`, which would load magika's file-type
model for every file although the extension already says the format.

An Office file with a password is not a zip but an OLE compound file holding an
`EncryptedPackage`; it is skipped with that reason, as is a file the converter
cannot read (corrupt, or an old binary .doc/.ppt/.xls renamed) and one with no
text at all, which would otherwise be stored as an empty document.
"""

from __future__ import annotations

import io
import re
from typing import Any

from worker.ingest.formats.pdf import PAGE_MARKER, Progress
from worker.ingest.formats.text import markdown_title
from worker.ingest.items import Document, Parsed, Skipped, SourceFile

#: The first bytes of an OLE compound file (how Office stores an encrypted document).
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENCRYPTED = "EncryptedPackage".encode("utf-16-le")
_SLIDE = re.compile(r"^<!-- Slide number: (\d+) -->$", re.MULTILINE)
#: Images markitdown writes as `![alt](name.png)`: names of files that are not stored.
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")

_KINDS = {".docx": "Word", ".pptx": "PowerPoint", ".xlsx": "Excel", ".epub": "EPUB"}


def _converter(suffix: str) -> Any:
    # markitdown and its format libraries load on first use, not with `suparag --help`.
    from markitdown import converters

    kinds: dict[str, Any] = {
        ".docx": converters.DocxConverter,
        ".pptx": converters.PptxConverter,
        ".xlsx": converters.XlsxConverter,
        ".epub": converters.EpubConverter,
    }
    return kinds[suffix]()


def read_office(file: SourceFile, data: bytes, progress: Progress) -> Parsed:
    """One document of markdown; titled by the file's own title, its first heading, else
    its name."""
    suffix = file.path.suffix.lower()
    kind = _KINDS[suffix]
    if data.startswith(_OLE_MAGIC):
        if _ENCRYPTED in data:
            reason = (f"password-protected {kind} file: save a copy without the password and "
                      "ingest that")
        else:
            reason = (f"an old binary Office file (.doc/.ppt/.xls), not {suffix}: save it as "
                      f"{suffix} and ingest that")
        return _skip(file, reason)
    from markitdown import StreamInfo

    try:
        result = _converter(suffix).convert(
            io.BytesIO(data), StreamInfo(extension=suffix, filename=file.path.name))
    except Exception as exc:  # any library's error on a bad file: this file is skipped
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        return _skip(file, f"corrupt or not a {kind} file ({reason}): open and save it again, "
                     "then ingest it")
    progress(1, 1)
    return _document(file, kind, result.markdown or "", result.title)


def _document(file: SourceFile, kind: str, markdown: str, title: str | None) -> Parsed:
    text = _SLIDE.sub(lambda m: PAGE_MARKER.format(n=m.group(1)), markdown)
    text = _IMAGE.sub(lambda m: m.group(1), text).strip()
    if not _has_text(text):
        return _skip(file, f"no text in this {kind} file: nothing to search")
    # A workbook's first heading is a sheet's name, not a title: it keeps the file name.
    heading = None if kind == "Excel" else markdown_title(text)
    title = " ".join((title or "").split()) or heading or file.path.name
    return Parsed(documents=[Document(file.source, title, text, {})])


def _has_text(text: str) -> bool:
    """Anything besides page markers, headings (an empty workbook still has `## Sheet1`)
    and markdown punctuation (empty tables, rules)."""
    rest = re.sub(r"^(<!-- page \d+ -->|#{1,6}[ \t].*)$", "", text, flags=re.MULTILINE)
    return bool(re.search(r"\w", rest))


def _skip(file: SourceFile, reason: str) -> Parsed:
    return Parsed(skipped=[Skipped(file.source, reason)])
