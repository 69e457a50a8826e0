"""PDF, Word, PowerPoint, Excel and EPUB ingest (issue 15): real files built here with
reportlab, python-docx, python-pptx, openpyxl and ebooklib, read through the pipeline,
chunked with the real tokenizer, and for PDFs the page carried to the chunk rows and
the answer's citations."""

from __future__ import annotations

import io
from pathlib import Path

from test_answering import answer_of, ask
from test_ingest import documents, people, run  # noqa: F401  (people is a fixture)

from cli.ask import cited_as
from worker.ingest.items import SourceFile
from worker.ingest.pipeline import read_source
from worker.jobs.answering import AnswerConfig, AnswerWorker
from worker.jobs.chunking import chunk_document
from worker.jobs.embedding import EmbeddingWorker

# -- builders: real files, made the way their authors' tools make them ----------------


def make_pdf(path: Path, pages: list[list[str]], *, encrypt: str | None = None) -> Path:
    """A PDF with a text layer: one list of lines per page (a line starting '# ' is set
    large and bold, as a heading)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path), pagesize=A4, encrypt=encrypt)
    for lines in pages:
        y = 800
        for line in lines:
            if line.startswith("# "):
                pdf.setFont("Helvetica-Bold", 16)
                pdf.drawString(72, y, line[2:])
            else:
                pdf.setFont("Helvetica", 11)
                pdf.drawString(72, y, line)
            y -= 20
        pdf.showPage()
    pdf.save()
    return path


def make_scanned_pdf(path: Path) -> Path:
    """Two pages holding only an image of text, as a scanner makes them: no text layer."""
    from PIL import Image, ImageDraw
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    image = Image.new("RGB", (600, 200), "white")
    ImageDraw.Draw(image).text((20, 80), "Travel expenses are refunded monthly.", fill="black")
    pdf = canvas.Canvas(str(path), pagesize=A4)
    for _ in range(2):
        pdf.drawImage(ImageReader(image), 72, 500, width=450, height=150)
        pdf.showPage()
    pdf.save()
    return path


def make_docx(path: Path) -> Path:
    import docx

    doc = docx.Document()
    doc.add_heading("Leave policy", level=1)
    doc.add_paragraph("Holidays are booked in the HR portal. " * 40)
    doc.add_heading("Sick leave", level=2)
    doc.add_paragraph("Report sickness to your manager before ten. " * 40)
    table = doc.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Days", "Kind"
    table.cell(1, 0).text, table.cell(1, 1).text = "25", "annual leave"
    doc.save(str(path))
    return path


def make_pptx(path: Path) -> Path:
    from pptx import Presentation

    deck = Presentation()
    for n, (title, body) in enumerate([("Roadmap", "Hybrid search ships in March."),
                                       ("Risks", "The pooler drops LISTEN."),
                                       ("Asks", "Two more reviewers.")], start=1):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = f"{body} (slide-{n})"
    deck.save(str(path))
    return path


def make_xlsx(path: Path) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = "Budget"
    sheet.append(["Team", "Quarter", "Spend"])
    sheet.append(["Search", "Q1", 1200])
    sheet.append(["Ingest", "Q2", 3400])
    other = book.create_sheet("Staff")
    other.append(["Name", "Role"])
    other.append(["Ada", "Engineer"])
    book.save(str(path))
    return path


def make_epub(path: Path) -> Path:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("suparag-test")
    book.set_title("The Operator's Handbook")
    book.set_language("en")
    book.add_author("Ada")
    chapters = []
    for n, (title, text) in enumerate([("Backups", "Point in time recovery keeps 7 days."),
                                       ("Restores", "A restore takes about an hour.")],
                                      start=1):
        chapter = epub.EpubHtml(title=title, file_name=f"ch{n}.xhtml", lang="en")
        chapter.content = f"<h1>{title}</h1><p>{text}</p>"
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = chapters
    book.spine = ["nav", *chapters]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    epub.write_epub(str(path), book)
    return path


def make_encrypted_docx(path: Path, password: str) -> Path:
    """A Word file with a password, encrypted as Office does (ECMA-376 agile)."""
    import msoffcrypto.format.ooxml

    plain = make_docx(path.with_name("plain-" + path.name))
    out = io.BytesIO()
    with plain.open("rb") as source:
        msoffcrypto.format.ooxml.OOXMLFile(source).encrypt(password, out)
    path.write_bytes(out.getvalue())
    return path


def read(path: Path, **kwargs):
    return read_source(SourceFile(path, path.name), **kwargs)


def chunks_of(embedder, doc):
    return chunk_document(doc.title, doc.content, max_tokens=embedder.max_tokens,
                          count_tokens=embedder.count_tokens,
                          split_tokens=embedder.split_tokens)


# -- PDF ----------------------------------------------------------------------------------


def test_pdf_text_and_pages_reach_the_chunks(tmp_path, embedder):
    pages = [[f"# Chapter {p}", *[f"Rule {p}.{i}: claims for page-{p} are filed monthly."
                                  for i in range(30)]] for p in range(1, 4)]
    parsed = read(make_pdf(tmp_path / "policy.pdf", pages))
    assert parsed.skipped == []
    (doc,) = parsed.documents
    assert doc.title == "policy.pdf"
    assert doc.metadata["pages"] == 3 and doc.metadata["format"] == "pdf"
    assert "Rule 2.17: claims for page-2 are filed monthly." in doc.content
    out = chunks_of(embedder, doc)
    assert {c.page for c in out} == {1, 2, 3}
    for chunk in out:
        # Each chunk holds text of its own page only, and no marker line.
        assert f"page-{chunk.page}" in chunk.content
        assert all(f"page-{p}" not in chunk.content for p in {1, 2, 3} - {chunk.page})
        assert "<!--" not in chunk.content
    assert [c.index for c in out] == list(range(len(out)))


def test_a_pdf_page_reports_progress(tmp_path):
    path = make_pdf(tmp_path / "long.pdf", [[f"Page {p} text."] for p in range(1, 31)])
    seen: list[tuple[int, int]] = []
    parsed = read(path, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(n, 30) for n in range(1, 31)]
    assert parsed.documents[0].content.count("<!-- page ") == 30


def test_scanned_pdf_is_skipped_with_the_reason(tmp_path):
    parsed = read(make_scanned_pdf(tmp_path / "scan.pdf"))
    assert parsed.documents == []
    (skipped,) = parsed.skipped
    assert skipped.reason.startswith("no text layer on any of its 2 pages (scanned?)")
    assert "OCR" in skipped.reason


def test_pdf_with_some_blank_pages_notes_them(tmp_path):
    path = make_pdf(tmp_path / "mixed.pdf", [["Text on one."], [], [], ["Text on four."]])
    parsed = read(path)
    assert [d.content.count("<!-- page") for d in parsed.documents] == [2]
    assert [n.message for n in parsed.notes] == [
        "2 of 4 pages have no text (scanned?) and are not searchable: pages 2-3"]


def test_encrypted_and_corrupt_pdfs_are_skipped_with_the_reason(tmp_path):
    locked = make_pdf(tmp_path / "locked.pdf", [["Secret numbers."]], encrypt="hunter2")
    good = make_pdf(tmp_path / "good.pdf", [["Fine text."] * 5] * 3).read_bytes()
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(good[: len(good) // 3])
    garbage = tmp_path / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)

    assert read(locked).skipped[0].reason.startswith("encrypted: the PDF needs a password")
    for path in (truncated, garbage):
        parsed = read(path)
        assert parsed.documents == [], path
        assert parsed.skipped[0].reason.startswith("corrupt or not a PDF"), path


# -- Office and EPUB ------------------------------------------------------------------


def test_docx_headings_become_markdown_and_break_chunks(tmp_path, embedder):
    (doc,) = read(make_docx(tmp_path / "leave.docx")).documents
    assert doc.title == "Leave policy"
    assert doc.metadata["format"] == "docx"
    assert "# Leave policy" in doc.content and "## Sick leave" in doc.content
    assert "annual leave" in doc.content
    out = chunks_of(embedder, doc)
    assert any(c.content.startswith("## Sick leave") for c in out)
    assert not any("HR portal" in c.content and "## Sick leave" in c.content for c in out)
    assert {c.page for c in out} == {None}


def test_pptx_slides_are_pages(tmp_path, embedder):
    (doc,) = read(make_pptx(tmp_path / "plan.pptx")).documents
    assert doc.title == "Roadmap"
    out = chunks_of(embedder, doc)
    assert [c.page for c in out] == [1, 2, 3]
    for chunk in out:
        assert f"(slide-{chunk.page})" in chunk.content


def test_xlsx_sheets_are_sections(tmp_path):
    (doc,) = read(make_xlsx(tmp_path / "budget.xlsx")).documents
    assert doc.title == "budget.xlsx"
    assert "## Budget" in doc.content and "## Staff" in doc.content
    assert "Ingest" in doc.content and "3400" in doc.content and "Engineer" in doc.content


def test_epub_chapters_and_title(tmp_path):
    (doc,) = read(make_epub(tmp_path / "ops.epub")).documents
    assert doc.title == "The Operator's Handbook"
    assert "Point in time recovery keeps 7 days." in doc.content
    assert "A restore takes about an hour." in doc.content
    assert "# Restores" in doc.content


def test_password_protected_and_corrupt_office_files_are_skipped(tmp_path):
    locked = make_encrypted_docx(tmp_path / "locked.docx", "hunter2")
    corrupt = tmp_path / "corrupt.pptx"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    empty = tmp_path / "empty.xlsx"
    from openpyxl import Workbook

    Workbook().save(str(empty))

    assert read(locked).skipped[0].reason == (
        "password-protected Word file: save a copy without the password and ingest that")
    assert read(corrupt).skipped[0].reason.startswith("corrupt or not a PowerPoint file")
    assert read(empty).skipped[0].reason == "no text in this Excel file: nothing to search"
    for path in (locked, corrupt, empty):
        assert read(path).documents == []


# -- through the database: nothing empty stored, pages in chunks and citations -------


def test_ingest_stores_readable_files_only_and_pages_reach_citations(
        conn, db_url, people, tmp_path, embedder):  # noqa: F811
    kb = tmp_path / "kb"
    kb.mkdir()
    make_pdf(kb / "policy.pdf", [
        ["# Travel", "Trains are booked in second class."],
        ["# Meals", "The octopus canteen serves lunch until two."],
    ])
    make_scanned_pdf(kb / "scan.pdf")
    make_encrypted_docx(kb / "locked.docx", "pw")
    (kb / "plain-locked.docx").unlink()
    make_docx(kb / "leave.docx")

    seen: list[tuple[str, int, int]] = []
    report = run(conn, [kb], on_progress=lambda f, done, total: seen.append(
        (f.source, done, total)))
    assert [s for s in seen if s[0] == "kb/policy.pdf"] == [
        ("kb/policy.pdf", 1, 2), ("kb/policy.pdf", 2, 2)]
    assert {s.source: s.reason.split(":")[0] for s in report.skipped} == {
        "kb/scan.pdf": "no text layer on any of its 2 pages (scanned?)",
        "kb/locked.docx": "password-protected Word file",
    }
    assert sorted(documents(conn)) == ["kb/leave.docx", "kb/policy.pdf"]

    worker = EmbeddingWorker(db_url, embedder)
    try:
        assert worker.drain().embedded == 2
    finally:
        worker.close()
    rows = conn.execute(
        "select d.source, c.page, c.content from public.document_chunks c"
        " join public.documents d on d.id = c.document_id order by d.source, c.chunk_index"
    ).fetchall()
    conn.commit()
    assert [(r["source"], r["page"]) for r in rows if r["source"] == "kb/policy.pdf"] == [
        ("kb/policy.pdf", 1), ("kb/policy.pdf", 2)]
    assert {r["page"] for r in rows if r["source"] == "kb/leave.docx"} == {None}

    question = ask(conn, people["alice"], "Until when does the canteen serve lunch?")
    conn.commit()
    answers = AnswerWorker(db_url, embedder, config=AnswerConfig(backoff_base_seconds=0.0))
    try:
        assert answers.drain().answered == 1
    finally:
        answers.close()
    first = answer_of(conn, question["id"])["citations"][0]
    assert (first["title"], first["page"]) == ("policy.pdf", 2)
    assert cited_as(first) == "policy.pdf, p. 2"
