"""PDF: each page's text layer through PDFium (pypdfium2), with a page marker before it.

Why PDFium and not markitdown's PDF converter (pdfplumber, then pdfminer.six over
the whole file again) or PyMuPDF: on this 2-core machine a 200-page text PDF took
4.7 s with pypdfium2, 18 s with pypdf, 111 s with pdfminer.six and 365 s through
markitdown (docs/ingest.md, "Choosing the libraries"); PyMuPDF is AGPL. pypdfium2
is Apache-2.0 / BSD-3-Clause and its wheel carries PDFium (about 9 MB).

The text is one document per file: each page that has text is `<!-- page N -->`
(N from 1, the page's position in the file, not its printed label), a blank line
and the page's text. The chunker keeps each chunk within one page and stores N
with it. A PDF with no text on any page (scanned, without OCR), a PDF that needs
a password, and a file PDFium cannot open are skipped with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from worker.ingest.items import Document, Note, Parsed, Skipped, SourceFile

#: The line that starts each page's text; worker/jobs/chunking.py reads it back.
PAGE_MARKER = "<!-- page {n} -->"

#: Control characters PDFium leaves in text (soft-hyphen marks and the like).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")

Progress = Callable[[int, int], None]


def read_pdf(file: SourceFile, data: bytes, progress: Progress) -> Parsed:
    """One document, page by page; progress(done, total) after each page."""
    import pypdfium2 as pdfium  # PDFium loads on first use, not with `suparag --help`

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        return Parsed(skipped=[Skipped(file.source, _open_failure(str(exc)))])
    try:
        total = len(pdf)
        pages: list[str] = []
        blank: list[int] = []
        for index in range(total):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_range()
                finally:
                    textpage.close()
            finally:
                page.close()
            text = _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
            if text:
                pages.append(PAGE_MARKER.format(n=index + 1) + "\n\n" + text)
            else:
                blank.append(index + 1)
            progress(index + 1, total)
    except pdfium.PdfiumError as exc:
        return Parsed(skipped=[Skipped(file.source, f"corrupt PDF: {exc}: repair or re-export "
                                       "it (e.g. print to PDF) and ingest it again")])
    finally:
        pdf.close()
    if not pages:
        why = "no pages" if total == 0 else f"no text layer on any of its {total} pages"
        return Parsed(skipped=[Skipped(file.source, f"{why} (scanned?): run OCR on it first "
                                       "(e.g. `ocrmypdf in.pdf out.pdf`) and ingest the result")])
    parsed = Parsed(documents=[Document(file.source, file.path.name, "\n\n".join(pages),
                                        {"pages": total})])
    if blank:
        parsed.notes.append(Note(file.source, f"{len(blank)} of {total} pages have no text "
                                 f"(scanned?) and are not searchable: {_ranges(blank)}"))
    return parsed


def _open_failure(message: str) -> str:
    """The skip reason for a PDF PDFium would not open."""
    if "password" in message.lower():
        return ("encrypted: the PDF needs a password to open; save a copy without the "
                "password and ingest that")
    return (f"corrupt or not a PDF ({message}): repair or re-export it (e.g. print to PDF) and "
            "ingest it again")


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 7 -> 'pages 1-3, 7'."""
    spans: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ("page " if len(numbers) == 1 else "pages ") + ", ".join(spans)
