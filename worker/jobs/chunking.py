"""Split a document into chunks that fit the embedding model.

Counted in the model's own tokens, so a chunk is never silently truncated by
the model. Breaks fall, in order of preference, at markdown headings, blank
lines (paragraphs), line ends, sentence ends, and, for a run of text with
none of those, between tokens. Consecutive chunks overlap by a few tokens of
whole pieces, and the title leads every embedded text as context.

Paged documents (a PDF's pages, a deck's slides) carry a line `<!-- page N -->`
before each page's text, written by the ingest readers. A chunk never spans two
pages and never overlaps into the next one, so each chunk has one page, which
citations give ("policy.pdf, p. 12"); the marker lines are not chunk text.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

_HEADING = re.compile(r"^#{1,6}\s", re.MULTILINE)
_HEADING_ONLY = re.compile(r"#{1,6}[ \t][^\n]*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
#: A page marker line, as worker/ingest/formats writes it (PAGE_MARKER there).
_PAGE = re.compile(r"^[ \t]*<!-- page (\d{1,9}) -->[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: its text, and the text given to the model."""

    index: int
    content: str
    embed_text: str
    #: The page the chunk came from, for documents with page markers; else None.
    page: int | None = None

    def content_hash(self, model: str) -> str:
        """Same text and model, same hash: the worker keeps that vector."""
        return hashlib.sha256(f"{model}\x00{self.embed_text}".encode()).hexdigest()


def _pages(text: str) -> list[tuple[int | None, str]]:
    """(page, text) runs split at page markers; text before the first marker has no page."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    runs: list[tuple[int | None, str]] = []
    page: int | None = None
    start = 0
    for marker in _PAGE.finditer(text):
        runs.append((page, text[start:marker.start()]))
        page, start = int(marker.group(1)), marker.end()
    runs.append((page, text[start:]))
    return [(p, t) for p, t in runs if t.strip()]


def _pieces(text: str) -> list[str]:
    """Paragraph-level pieces, a heading always starting a new one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        # A heading inside a block (no blank line before it) still starts a piece.
        starts = [m.start() for m in _HEADING.finditer(block)]
        bounds = [0, *[s for s in starts if s > 0], len(block)]
        for start, end in itertools.pairwise(bounds):
            piece = block[start:end].strip()
            if piece:
                pieces.append(piece)
    return pieces


def _split_to_fit(piece: str, budget: int, count: Callable[[str], int],
                  token_split: Callable[[str, int], list[str]]) -> list[tuple[str, int]]:
    """(piece, its tokens) of at most budget tokens: by lines, then sentences, then tokens."""
    size = count(piece)
    if size <= budget:
        return [(piece, size)]
    for pattern in (r"\n", _SENTENCE_END.pattern):
        parts = [p.strip() for p in re.split(pattern, piece) if p.strip()]
        if len(parts) > 1:
            out: list[tuple[str, int]] = []
            for part in parts:
                out.extend(_split_to_fit(part, budget, count, token_split))
            return out
    return [(part, count(part)) for part in token_split(piece, budget)]


def chunk_document(
    title: str,
    content: str,
    *,
    max_tokens: int,
    count_tokens: Callable[[str], int],
    split_tokens: Callable[[str, int], list[str]],
    overlap_tokens: int = 32,
) -> list[Chunk]:
    """Chunks of content whose embedded text (title + body) fits max_tokens.

    split_tokens(text, n) cuts text into runs of at most n tokens; it is only
    used for text with no natural break that is longer than a chunk.
    """
    title = title.strip()
    header = f"{title}\n\n" if title else ""
    budget = max_tokens - (count_tokens(header) if header else 0)
    if budget < 16:
        # A title so long it leaves no room: embed it as a piece of its own.
        header, budget = "", max_tokens
        content = f"{title}\n\n{content}"
    overlap_tokens = min(overlap_tokens, budget // 4)

    pieces: list[tuple[str, int, int | None]] = []
    for page, text in _pages(content):
        for piece in _pieces(text):
            for part, size in _split_to_fit(piece, budget, count_tokens, split_tokens):
                pieces.append((part, size, page))

    # The tokens of the section each heading starts (up to the next heading or page).
    sections: dict[int, int] = {}
    for start, (piece, _, page) in enumerate(pieces):
        if _HEADING.match(piece):
            end = start + 1
            while end < len(pieces) and pieces[end][2] == page and \
                    not _HEADING.match(pieces[end][0]):
                end += 1
            sections[start] = sum(size + 1 for _, size, _ in pieces[start:end])

    bodies: list[tuple[int | None, list[tuple[str, int]]]] = []
    current: list[tuple[str, int]] = []
    current_page: int | None = pieces[0][2] if pieces else None
    used = 0
    for position, (piece, size, page) in enumerate(pieces):
        if current and (page != current_page or used + sections.get(position, 0) > budget):
            # A new page starts a new chunk, with no overlap: one page per chunk. So does
            # a heading whose section does not fit in what is left of this chunk: a
            # section is not split behind another section's tail when it need not be.
            bodies.append((current_page, current))
            current, used = [], 0
        current_page = page
        # +1 per join: the blank line between pieces is a token or so.
        if current and used + size + 1 > budget:
            # A heading never ends a chunk: it moves on with the section it heads (a
            # Word file's heading is a paragraph of its own, so it would be left behind).
            moved: list[tuple[str, int]] = []
            while len(current) > 1 and _HEADING_ONLY.fullmatch(current[-1][0]) and \
                    sum(s + 1 for _, s in [current[-1], *moved]) + size + 1 <= budget:
                moved.insert(0, current.pop())
            bodies.append((current_page, current))
            if moved:
                current, used = moved, sum(s + 1 for _, s in moved)
                current.append((piece, size))
                used += size + 1
                continue
            carried: list[tuple[str, int]] = []
            carried_size = 0
            # A new section starts clean: overlap never crosses a heading.
            for prev, prev_size in ([] if _HEADING.match(piece) else reversed(current)):
                if carried_size + prev_size + 1 > overlap_tokens or \
                        carried_size + prev_size + size + 2 > budget:
                    break
                carried.insert(0, (prev, prev_size))
                carried_size += prev_size + 1
            current, used = carried, carried_size
        current.append((piece, size))
        used += size + 1
    if current:
        bodies.append((current_page, current))

    chunks = []
    for index, (page, body) in enumerate(bodies):
        text = "\n\n".join(piece for piece, _ in body)
        chunk = Chunk(index=index, content=text, embed_text=header + text, page=page)
        # Token counts of pieces add up to the count of their join for the
        # tokenizers we use; check anyway, since a model that truncated
        # would embed less than we store.
        if count_tokens(chunk.embed_text) > max_tokens:
            raise ValueError(f"chunk {index} exceeds {max_tokens} tokens; refusing to truncate")
        chunks.append(chunk)
    return chunks
