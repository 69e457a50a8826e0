"""Chunking in the model's own tokens, with the real tokenizer."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.jobs.chunking import chunk_document


def chunks(embedder, title, content, **kw):
    return chunk_document(title, content, max_tokens=embedder.max_tokens,
                          count_tokens=embedder.count_tokens,
                          split_tokens=embedder.split_tokens, **kw)


def test_every_chunk_fits_and_carries_the_title(embedder):
    content = "\n\n".join(f"Paragraph {i}. " + "Row level security keeps tenants apart. " * 8
                          for i in range(30))
    out = chunks(embedder, "Handbook", content)
    assert len(out) > 3
    for chunk in out:
        assert chunk.embed_text.startswith("Handbook\n\n")
        assert embedder.count_tokens(chunk.embed_text) <= embedder.max_tokens
    assert [c.index for c in out] == list(range(len(out)))


def test_nothing_is_lost(embedder):
    paragraphs = [f"Fact number {i} is unique-{i}." for i in range(200)]
    out = chunks(embedder, "t", "\n\n".join(paragraphs))
    joined = "\n".join(c.content for c in out)
    for p in paragraphs:
        assert p in joined


def test_breaks_at_headings(embedder):
    content = ("# Install\n" + "Run the installer. " * 60 +
               "\n# Configure\n" + "Set the variables. " * 60)
    out = chunks(embedder, "Guide", content)
    assert any(c.content.startswith("# Configure") for c in out)
    assert not any("Run the installer" in c.content and "# Configure" in c.content for c in out)


def test_consecutive_chunks_overlap(embedder):
    paragraphs = [f"Sentence {i} about vectors and policies." for i in range(120)]
    out = chunks(embedder, "", "\n\n".join(paragraphs), overlap_tokens=32)
    assert len(out) > 2
    for before, after in itertools.pairwise(out):
        # the next chunk opens with a tail of whole pieces of the previous one
        tail = before.content.split("\n\n")
        first = after.content.split("\n\n")[0]
        assert first in tail and tail[-1] in after.content
        carried = tail[tail.index(first):]
        assert sum(embedder.count_tokens(p) for p in carried) <= 32 + len(carried)


def test_a_run_without_breaks_is_split_by_tokens(embedder):
    # No spaces, no line or sentence ends, thousands of tokens. (Not "x" * 5000:
    # BERT's tokenizer maps a word over 100 characters to a single [UNK].)
    blob = ",".join(f"item{i}" for i in range(1500))
    out = chunks(embedder, "blob", blob)
    assert len(out) > 1
    assert "".join(c.content for c in out) == blob
    assert all(embedder.count_tokens(c.embed_text) <= embedder.max_tokens for c in out)


def test_empty_content_gives_no_chunks(embedder):
    assert chunks(embedder, "Title only", "   \n\n ") == []


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=3000),
       title=st.text(max_size=80))
def test_any_text_fits_without_loss(embedder, text, title):
    out = chunks(embedder, title, text)
    for chunk in out:
        assert embedder.count_tokens(chunk.embed_text) <= embedder.max_tokens
    squeezed = "".join("".join(c.content.split()) for c in out)
    for word in text.split():
        assert "".join(word.split()) in squeezed or len(out) == 0
