"""Read files and folders into public.documents, one document per file or JSON record.

Each document has a `source` (the file's path relative to the folder it was
found under, or `file.jsonl#id=...` for one record) that is unique per owner,
so ingesting again upserts on (owner_id, source): unchanged text is left
alone, and the enqueue trigger, which fires only when content_version moves,
queues nothing for it. Problems with one file or record are reported and the
rest goes on; nothing is written in part. docs/ingest.md has the rules.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.documents import VISIBILITIES, loads, parse_pairs, storable
from worker.errors import ConfigError, NotFound, NotText
from worker.users import User, find_user

#: Extension -> format; any other file is read as plain text if it decodes as text.
FORMATS = {
    ".md": "markdown", ".markdown": "markdown",
    ".txt": "text", ".rst": "rst",
    ".html": "html", ".htm": "html",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
}

#: Like git: a NUL in the first 8 KB means binary.
SNIFF_BYTES = 8192
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_FALLBACK_ENCODING = "cp1252"
#: Documents per transaction; a batch also ends once it holds this much text.
BATCH_SIZE = 50
BATCH_CHARS = 8 * 1024 * 1024

# -- what we found, read and wrote ---------------------------------------------------


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


@dataclass
class Discovery:
    """The files under the paths given, in order, and what was passed over."""

    files: list[SourceFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class Written:
    """One document's outcome: created, updated or unchanged."""

    source: str
    id: uuid.UUID
    outcome: str
    queued: bool


@dataclass
class IngestReport:
    """Everything one run did, for the summary."""

    files: int = 0
    documents: list[Written] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for d in self.documents if d.outcome == outcome)

    @property
    def queued(self) -> int:
        """Documents that got an embedding job (new or changed title/content)."""
        return sum(1 for d in self.documents if d.queued)

    def as_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "created": self.count("created"),
            "updated": self.count("updated"),
            "unchanged": self.count("unchanged"),
            "skipped": len(self.skipped),
            "queued": self.queued,
            "documents": [
                {"source": d.source, "id": str(d.id), "outcome": d.outcome, "queued": d.queued}
                for d in self.documents
            ],
            "skipped_items": [{"source": s.source, "reason": s.reason} for s in self.skipped],
            "warnings": [{"source": n.source, "message": n.message} for n in self.notes],
        }


@dataclass(frozen=True)
class Target:
    """Who owns what this run writes, and how it is shared."""

    owner: User
    team: str | None
    visibility: str
    metadata: dict[str, Any]


# -- options -------------------------------------------------------------------------


def check_encoding(name: str) -> str:
    """The codec's canonical name, or ConfigError."""
    try:
        return codecs.lookup(name).name
    except LookupError as exc:
        raise ConfigError(
            f"unknown encoding {name!r}: use a Python codec name such as cp1252, latin-1 or "
            "shift_jis"
        ) from exc


def make_target(
    conn: psycopg.Connection[Any],
    *,
    owner: str,
    team: str | None = None,
    visibility: str = "private",
    metadata: Iterable[str] = (),
) -> Target:
    """Resolve the owner and check the sharing options before anything is read."""
    if visibility not in VISIBILITIES:
        raise ConfigError(f"visibility {visibility!r}: use one of {', '.join(VISIBILITIES)}")
    user = find_user(conn, owner)
    team = team if team is not None else user.team
    if visibility == "team" and not team:
        raise ConfigError(
            f"--visibility team needs a team and {user.email} has none: pass --team, or "
            f"`suparag users add {user.email} --team TEAM`"
        )
    return Target(owner=user, team=team or None, visibility=visibility,
                  metadata=parse_pairs(metadata, option="metadata"))


# -- finding files -------------------------------------------------------------------


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


# -- reading files -------------------------------------------------------------------


def decode(data: bytes, fallback: str = DEFAULT_FALLBACK_ENCODING) -> tuple[str, str]:
    """(text, encoding): UTF-8 (or a BOM's encoding), else the fallback, else NotText."""
    for bom, codec in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                       (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise NotText(f"binary: has a {codec} byte-order mark but is not {codec} "
                              f"({exc.reason} at byte {exc.start})") from exc
            if "\x00" in text[:SNIFF_BYTES]:
                raise NotText("binary: NUL characters in the first 8 KB")
            return text, "utf-8" if codec == "utf-8-sig" else codec
    if b"\x00" in data[:SNIFF_BYTES]:
        raise NotText("binary: NUL bytes in the first 8 KB")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as utf8_error:
        try:
            text = data.decode(fallback)
        except UnicodeDecodeError as exc:
            raise NotText(f"binary: neither UTF-8 ({utf8_error.reason} at byte "
                          f"{utf8_error.start}) nor {fallback}") from exc
        sample = text[:SNIFF_BYTES]
        controls = sum(1 for ch in sample if ch < " " and ch not in "\t\n\r\f\v\x1b")
        if controls > len(sample) / 10:
            raise NotText(f"binary: not UTF-8, and over 10% control characters as {fallback}"
                          ) from utf8_error
        return text, fallback


def read_source(
    file: SourceFile,
    *,
    fallback_encoding: str = DEFAULT_FALLBACK_ENCODING,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Parsed:
    """The documents in one file, or why it was skipped, plus notes on what was changed."""
    parsed = Parsed()
    try:
        info = file.path.stat()
        if not stat.S_ISREG(info.st_mode):
            parsed.skipped.append(Skipped(file.source, "not a regular file"))
            return parsed
        if info.st_size > max_bytes:
            parsed.skipped.append(Skipped(
                file.source, f"too large: {info.st_size:,} bytes, the limit is {max_bytes:,} "
                "(raise it with --max-size)"))
            return parsed
        data = file.path.read_bytes()
    except OSError as exc:
        broken = " (broken symlink)" if file.path.is_symlink() and not file.path.exists() else ""
        parsed.skipped.append(Skipped(file.source, f"unreadable: {exc.strerror}{broken}"))
        return parsed
    try:
        text, encoding = decode(data, fallback_encoding)
    except NotText as exc:
        parsed.skipped.append(Skipped(file.source, str(exc)))
        return parsed
    if encoding not in ("utf-8", "utf-16"):
        parsed.notes.append(Note(file.source, f"not UTF-8: read as {encoding} (if that is "
                                 "wrong, pass --encoding)"))

    fmt = FORMATS.get(file.path.suffix.lower(), "text")
    base_meta: dict[str, Any] = {"format": fmt}
    if encoding != "utf-8":
        base_meta["encoding"] = encoding
    if fmt == "json":
        _read_json(file, text, base_meta, parsed)
    elif fmt == "jsonl":
        _read_jsonl(file, text, base_meta, parsed)
    else:
        title, content = _text_document(file.path, text, fmt)
        if not content.strip():
            parsed.notes.append(Note(file.source, "empty: stored as a document with no "
                                     "content (nothing to search)"))
        parsed.documents.append(Document(file.source, title, content,
                                         {**base_meta, "source": file.source}))

    # NULs past the first 8 KB, or from JSON escapes: PostgreSQL text cannot hold them.
    for index, doc in enumerate(parsed.documents):
        fields_, removed = storable([doc.title, doc.content, doc.metadata])
        if removed:
            title, content, metadata = fields_
            parsed.documents[index] = Document(doc.source, title, content, metadata)
            parsed.notes.append(Note(doc.source, f"removed {removed} NUL or invalid surrogate "
                                     "character(s), which PostgreSQL text cannot store"))
    return parsed


def _text_document(path: Path, text: str, fmt: str) -> tuple[str, str]:
    """(title, content) of a markdown, text, rst, HTML or other text file."""
    if fmt == "html":
        extracted = _HtmlText.extract(text)
        return extracted.title or extracted.first_h1 or path.stem, extracted.text
    if fmt == "rst":
        return _rst_title(text) or path.stem, text
    if path.suffix.lower() in FORMATS:  # markdown or .txt
        return _markdown_title(text) or path.stem, text
    return path.name, text  # unknown extension: the name says more than the stem


_ATX = re.compile(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$")
_RST_UNDERLINE = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1+[ \t]*$")


def _markdown_title(text: str) -> str | None:
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


class _HtmlText(HTMLParser):
    """Readable text of an HTML page: blocks as paragraphs, headings as markdown."""

    SKIP = frozenset({"script", "style", "template", "noscript"})
    BLOCKS = frozenset({
        "address", "article", "aside", "blockquote", "body", "dd", "details", "div", "dl",
        "dt", "figcaption", "figure", "footer", "form", "header", "hr", "html", "li", "main",
        "nav", "ol", "p", "section", "summary", "table", "tr", "ul",
    })
    BREAK = "\ue000"  # a line break inside a paragraph, safe from whitespace folding

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.inline: list[str] = []
        self.prefix = ""
        self.skip_depth = 0
        self.pre_depth = 0
        self.in_title = False
        self.title_parts: list[str] = []
        self.heading: list[str] | None = None
        self.first_h1: str | None = None

    @classmethod
    def extract(cls, html: str) -> _HtmlText:
        parser = cls()
        parser.feed(html)
        parser.close()
        parser._flush()
        return parser

    @property
    def title(self) -> str:
        return " ".join("".join(self.title_parts).split())

    @property
    def text(self) -> str:
        return "\n\n".join(self.blocks)

    def _flush(self) -> None:
        raw = "".join(self.inline)
        self.inline = []
        if self.pre_depth:
            body = raw.strip("\n")
        else:
            body = re.sub(rf"[ \t]*{self.BREAK}[ \t]*", "\n", " ".join(raw.split()))
        if body.strip():
            self.blocks.append(self.prefix + body)
        self.prefix = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag == "title":
            self.in_title = True
        elif tag == "br":
            self.inline.append("\n" if self.pre_depth else self.BREAK)
        elif tag == "pre":
            self._flush()
            self.pre_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.prefix = "#" * int(tag[1]) + " "
            if tag == "h1" and self.first_h1 is None:
                self.heading = []
        elif tag in self.BLOCKS:
            self._flush()
            if tag == "li":
                self.prefix = "- "
        elif tag in ("td", "th"):
            self.inline.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "title":
            self.in_title = False
        elif tag == "pre":
            self._flush()
            self.pre_depth = max(0, self.pre_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            if self.heading is not None:
                self.first_h1 = " ".join("".join(self.heading).split()) or None
                self.heading = None
            self._flush()
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        if self.in_title:
            self.title_parts.append(data)
            return
        if self.heading is not None:
            self.heading.append(data)
        self.inline.append(data)


def _record_fields(value: dict[str, Any]) -> tuple[str | None, str, dict[str, Any]]:
    """(title, content, metadata) of a JSON record; other keys join the metadata."""
    content_key = "content" if "content" in value else "text"
    content = value.get(content_key)
    if not isinstance(content, str):
        raise ValueError(f'"{content_key}" must be a string')
    title = value.get("title")
    if title is not None and not isinstance(title, str):
        raise ValueError('"title" must be a string')
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError('"metadata" must be an object')
    extra = {k: v for k, v in value.items() if k not in (content_key, "title", "metadata")}
    return title, content, {**extra, **metadata}


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and ("content" in value or "text" in value)


def _record_key(value: dict[str, Any], fallback: str) -> str:
    """`id=<id>` when the record has a string or integer id, else the fallback."""
    ident = value.get("id")
    if isinstance(ident, str | int) and not isinstance(ident, bool) and str(ident).strip():
        return f"id={ident}"
    return fallback


def _add_record(file: SourceFile, value: dict[str, Any], key: str | None, where: str,
                base_meta: dict[str, Any], parsed: Parsed) -> None:
    source = file.source if key is None else f"{file.source}#{key}"
    try:
        title, content, metadata = _record_fields(value)
    except ValueError as exc:
        parsed.skipped.append(Skipped(source, f"{where}: {exc}"))
        return
    default_title = file.path.stem if key is None else f"{file.path.stem} ({where})"
    parsed.documents.append(Document(source, title or default_title, content,
                                     {**metadata, **base_meta, "source": source}))


def _read_json(file: SourceFile, text: str, base_meta: dict[str, Any], parsed: Parsed) -> None:
    if not text.strip():
        parsed.skipped.append(Skipped(file.source, "empty: no JSON value"))
        return
    try:
        value = loads(text)
    except ValueError as exc:
        parsed.skipped.append(Skipped(file.source, f"invalid JSON: {exc}"))
        return
    if _is_record(value):
        _add_record(file, value, None, "record", base_meta, parsed)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value) \
            and any(_is_record(v) for v in value):
        for index, item in enumerate(value):
            where = f"item {index}"
            if _is_record(item):
                _add_record(file, item, _record_key(item, f"item={index}"), where, base_meta,
                            parsed)
            else:
                parsed.skipped.append(Skipped(f"{file.source}#item={index}",
                                              f'{where}: no "content" or "text"'))
    else:
        content = json.dumps(value, indent=2, ensure_ascii=False)
        parsed.documents.append(Document(file.source, file.path.stem, content,
                                         {**base_meta, "source": file.source}))


def _read_jsonl(file: SourceFile, text: str, base_meta: dict[str, Any], parsed: Parsed) -> None:
    lines = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1
        where = f"line {number}"
        try:
            value = loads(line)
        except ValueError as exc:
            parsed.skipped.append(Skipped(f"{file.source}#line={number}",
                                          f"{where}: invalid JSON: {exc}"))
            continue
        if not _is_record(value):
            parsed.skipped.append(Skipped(f"{file.source}#line={number}",
                                          f'{where}: not an object with "content" or "text"'))
            continue
        _add_record(file, value, _record_key(value, f"line={number}"), where, base_meta, parsed)
    if not lines:
        parsed.skipped.append(Skipped(file.source, "empty: no records"))


# -- writing -------------------------------------------------------------------------

_UPSERT = """
with input as (
  select * from unnest(%(sources)s::text[], %(titles)s::text[], %(contents)s::text[],
                       %(metadata)s::jsonb[]) as i(source, title, content, metadata)
),
prior as (
  select d.id, d.source, d.content_version from public.documents d
  where d.owner_id = %(owner)s and d.source in (select source from input)
),
written as (
  insert into public.documents as d
    (owner_id, team, visibility, source, title, content, metadata)
  select %(owner)s, %(team)s, %(visibility)s, i.source, i.title, i.content, i.metadata
  from input i
  on conflict (owner_id, source) where source is not null do update
    set title = excluded.title, content = excluded.content, metadata = excluded.metadata,
        team = excluded.team, visibility = excluded.visibility
    where (d.title, d.content, d.metadata, d.team, d.visibility)
          is distinct from (excluded.title, excluded.content, excluded.metadata,
                            excluded.team, excluded.visibility)
  returning d.id, d.source, d.content_version
)
select i.source, coalesce(w.id, p.id) as id, p.content_version as before,
       w.content_version as after
from input i
left join prior p on p.source = i.source
left join written w on w.source = i.source
"""


def _write(conn: psycopg.Connection[Any], batch: list[Document], target: Target,
           report: IngestReport) -> None:
    """Upsert one batch in one transaction (so one wake-up for the workers)."""
    rows = conn.execute(_UPSERT, {
        "owner": target.owner.id,
        "team": target.team,
        "visibility": target.visibility,
        "sources": [d.source for d in batch],
        "titles": [d.title for d in batch],
        "contents": [d.content for d in batch],
        "metadata": [Jsonb({**target.metadata, **d.metadata}) for d in batch],
    }).fetchall()
    conn.commit()
    for row in rows:
        if row["before"] is None:
            outcome, queued = "created", True
        elif row["after"] is None:
            outcome, queued = "unchanged", False
        else:
            outcome, queued = "updated", row["after"] != row["before"]
        report.documents.append(Written(row["source"], row["id"], outcome, queued))


def ingest(
    conn: psycopg.Connection[Any],
    found: Discovery,
    target: Target,
    *,
    fallback_encoding: str = DEFAULT_FALLBACK_ENCODING,
    max_bytes: int = DEFAULT_MAX_BYTES,
    batch_size: int = BATCH_SIZE,
    on_file: Callable[[SourceFile], None] | None = None,
) -> IngestReport:
    """Read every file found and upsert its documents for target, committing per batch."""
    report = IngestReport(files=len(found.files), skipped=list(found.skipped))
    batch: list[Document] = []
    batch_chars = 0
    seen: dict[str, str] = {}
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.commit()
    try:
        for file in found.files:
            parsed = read_source(file, fallback_encoding=fallback_encoding, max_bytes=max_bytes)
            report.skipped.extend(parsed.skipped)
            report.notes.extend(parsed.notes)
            for doc in parsed.documents:
                if doc.source in seen:
                    report.skipped.append(Skipped(
                        doc.source, f"duplicate source: {seen[doc.source]} already gave a "
                        "document of that name"))
                    continue
                seen[doc.source] = str(file.path)
                batch.append(doc)
                batch_chars += len(doc.content)
                if len(batch) >= batch_size or batch_chars >= BATCH_CHARS:
                    _write(conn, batch, target, report)
                    batch, batch_chars = [], 0
            if on_file is not None:
                on_file(file)
        if batch:
            _write(conn, batch, target, report)
    except BaseException:
        conn.rollback()
        raise
    return report
