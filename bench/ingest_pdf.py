"""PDF ingest speed: pages per second through `suparag ingest`'s reading stage.

    python -m bench.ingest_pdf [--pages 200] [--repeat 3] [--json]

Writes a text PDF of --pages pages (a heading and 40 lines each, Helvetica,
written here with no PDF library, so the bench needs only what `suparag ingest`
needs) and reads it --repeat times through `worker.ingest.pipeline.read_source`:
PDFium's text extraction per page, the page markers, the control-character
clean-up and the storable check, i.e. everything ingest does to a PDF before its
one upsert. Prints the best and median pages per second. Embedding is not
included: `suparag bench worker` measures that.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import emit
from worker.ingest.items import SourceFile
from worker.ingest.pipeline import read_source


def text_pdf(pages: int) -> bytes:
    """A valid PDF (xref and all) with a text layer on every page."""
    objects: list[bytes] = [b"", b""]  # 1: catalog, 2: page tree, filled in below
    font = len(objects) + 1
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids: list[int] = []
    for p in range(1, pages + 1):
        lines = [f"BT /F1 16 Tf 72 800 Td (Section {p}: travel policy) Tj ET"]
        lines += [f"BT /F1 11 Tf 72 {770 - 18 * i} Td (Line {i} of page {p}: employees may "
                  "claim travel expenses within thirty days.) Tj ET" for i in range(40)]
        stream = "\n".join(lines).encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        content = len(objects)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (content, font))
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids), pages)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


def run(*, pages: int = 200, repeat: int = 3) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="suparag-bench-pdf-") as tmp:
        path = Path(tmp) / "policy.pdf"
        path.write_bytes(text_pdf(pages))
        seconds: list[float] = []
        chars = 0
        for _ in range(repeat):
            started = time.perf_counter()
            parsed = read_source(SourceFile(path, path.name), max_bytes=1 << 30)
            seconds.append(time.perf_counter() - started)
            if parsed.skipped or len(parsed.documents) != 1:
                raise RuntimeError(f"the bench PDF was not read: {parsed.skipped}")
            chars = len(parsed.documents[0].content)
    return {"pages": pages, "repeat": repeat, "chars": chars,
            "seconds": [round(s, 4) for s in seconds],
            "pages_per_second_best": round(pages / min(seconds), 1),
            "pages_per_second_median": round(pages / statistics.median(seconds), 1)}


def print_report(result: dict[str, Any]) -> None:
    print(
        f"PDF ingest (reading stage), {result['pages']} pages x {result['repeat']}: "
        f"{result['pages_per_second_median']} pages/s median, "
        f"{result['pages_per_second_best']} best ({result['chars']:,} characters of text)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    emit(run(pages=args.pages, repeat=args.repeat), args.json, print_report)


if __name__ == "__main__":
    main()
