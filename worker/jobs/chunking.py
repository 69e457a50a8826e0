"""Split a document into chunks that fit the embedding model.

Counted in the model's own tokens, so a chunk is never silently truncated by
the model. Breaks fall, in order of preference, at markdown headings, blank
lines (paragraphs), line ends, sentence ends, and, for a run of text with
none of those, between tokens. Consecutive chunks overlap by a few tokens of
whole pieces, and the title leads every embedded text as context.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

_HEADING = re.compile(r"^#{1,6}\s", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: its text, and the text given to the model."""

    index: int
    content: str
    embed_text: str

    def content_hash(self, model: str) -> str:
        """Same text and model, same hash: the worker keeps that vector."""
        return hashlib.sha256(f"{model}\x00{self.embed_text}".encode()).hexdigest()


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
                  token_split: Callable[[str, int], list[str]]) -> list[str]:
    """Pieces of at most budget tokens: by lines, then sentences, then tokens."""
    if count(piece) <= budget:
        return [piece]
    for pattern in (r"\n", _SENTENCE_END.pattern):
        parts = [p.strip() for p in re.split(pattern, piece) if p.strip()]
        if len(parts) > 1:
            out: list[str] = []
            for part in parts:
                out.extend(_split_to_fit(part, budget, count, token_split))
            return out
    return token_split(piece, budget)


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

    pieces: list[tuple[str, int]] = []
    for piece in _pieces(content):
        for part in _split_to_fit(piece, budget, count_tokens, split_tokens):
            pieces.append((part, count_tokens(part)))

    bodies: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    used = 0
    for piece, size in pieces:
        # +1 per join: the blank line between pieces is a token or so.
        if current and used + size + 1 > budget:
            bodies.append(current)
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
        bodies.append(current)

    chunks = []
    for index, body in enumerate(bodies):
        text = "\n\n".join(piece for piece, _ in body)
        chunk = Chunk(index=index, content=text, embed_text=header + text)
        # Token counts of pieces add up to the count of their join for the
        # tokenizers we use; check anyway, since a model that truncated
        # would embed less than we store.
        if count_tokens(chunk.embed_text) > max_tokens:
            raise ValueError(f"chunk {index} exceeds {max_tokens} tokens; refusing to truncate")
        chunks.append(chunk)
    return chunks
