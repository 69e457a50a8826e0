"""HTML: the readable text of a page (stdlib html.parser), titled by <title> or <h1>."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from worker.ingest.formats.text import single
from worker.ingest.items import Parsed, SourceFile


def read_html(file: SourceFile, text: str) -> Parsed:
    """Blocks as paragraphs, headings as markdown; titled by <title>, <h1>, else the stem."""
    extracted = _HtmlText.extract(text)
    return single(file, extracted.title or extracted.first_h1 or file.path.stem, extracted.text)


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

