"""Formats whose content is the text as is: markdown (and .txt), reStructuredText, and
files of any other extension; only the title is looked for."""

from __future__ import annotations

import itertools
import re

from worker.ingest.items import Document, Note, Parsed, SourceFile


def single(file: SourceFile, title: str, content: str) -> Parsed:
    """One document for the whole file; an empty one is kept, with a note."""
    parsed = Parsed(documents=[Document(file.source, title, content, {})])
    if not content.strip():
        parsed.notes.append(Note(file.source, "empty: stored as a document with no "
                                 "content (nothing to search)"))
    return parsed


def read_markdown(file: SourceFile, text: str) -> Parsed:
    """Titled by front matter or the first heading, else the file stem."""
    return single(file, markdown_title(text) or file.path.stem, text)


def read_rst(file: SourceFile, text: str) -> Parsed:
    """Titled by the first underlined line, else the file stem."""
    return single(file, _rst_title(text) or file.path.stem, text)


def read_plain(file: SourceFile, text: str) -> Parsed:
    """An unknown extension: titled by the file name, which says more than the stem."""
    return single(file, file.path.name, text)


_ATX = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$")
_RST_UNDERLINE = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1+[ \t]*$")


def markdown_title(text: str) -> str | None:
    """YAML front matter `title:`, else the first ATX or setext heading outside code fences."""
    lines = text.splitlines()
    start = 0
    if lines and lines[0].strip() == "---":
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                for line in lines[1:end]:
                    match = _FRONT_TITLE.match(line)
                    if match:
                        return match.group(1).strip("'\"").strip() or None
                start = end + 1
                break
    fence: str | None = None
    previous = ""
    for index in range(start, len(lines)):
        line = lines[index]
        opened = _FENCE.match(line)
        if opened:
            marker = opened.group(1)
            if fence is None:
                fence = marker[0]
            elif marker[0] == fence:
                fence = None
            previous = ""
            continue
        if fence is None:
            atx = _ATX.match(line)
            if atx and atx.group(1).strip():
                return atx.group(1).strip()
            nxt = lines[index + 1] if index + 1 < len(lines) else ""
            if line.strip() and not previous.strip() and _SETEXT.match(nxt) \
                    and not _SETEXT.match(line):
                return line.strip()
        previous = line
    return None


def _rst_title(text: str) -> str | None:
    """The first line underlined with punctuation at least as long as it."""
    lines = text.splitlines()
    for line, nxt in itertools.pairwise(lines):
        title = line.strip()
        if title and not _RST_UNDERLINE.match(line) and _RST_UNDERLINE.match(nxt) \
                and len(nxt.rstrip()) >= len(line.rstrip()):
            return title
    return None
