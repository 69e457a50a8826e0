"""Build the Python FAQ evaluation corpus and set from Debian's python3.11-doc.

    apt-get install -y python3.11-doc   (or: apt-get download python3.11-doc && dpkg -x ...)
    python -m bench.eval.build_python_faq --html /usr/share/doc/python3.11/html --out /tmp/pyeval

writes

    OUT/python-docs/faq/<page>/<question-id>.html   one page per FAQ question with its answer
    OUT/python-docs/tutorial/*.html, howto/*.html   the tutorial and HOWTOs, as shipped
    bench/eval/python-faq.jsonl                      (or --set PATH) the evaluation set

Each FAQ question becomes its own HTML page (the question's <section> as the
docs have it, under a <title> of the question), so the set can name the page
that answers it: the labels come from the FAQ itself, not from us. The
tutorial and the HOWTOs are there as the rest of a realistic corpus, pages
that share the FAQ's vocabulary without answering its questions.

The set holds two kinds of queries:
- `heading`: every question, as its heading says it. These reward matching
  the heading, which the answer page contains.
- `paraphrase`: paraphrased.json beside this script, written by hand in other words than the
  heading, for a subset of the questions.

Then `suparag ingest OUT/python-docs` (sources start with `python-docs/`),
`suparag worker --once`, and `suparag eval run bench/eval/python-faq.jsonl`.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
from pathlib import Path

FAQ_PAGES = ("general", "programming", "design", "library", "extending", "windows", "gui",
             "installed")
CORPUS = "python-docs"
SET = Path(__file__).with_name("python-faq.jsonl")

# page/question id (the FAQ's section id) -> queries in other words than its heading,
# written by hand
PARAPHRASED_FILE = Path(__file__).with_name("paraphrased.json")


def _sections(page: str) -> list[tuple[str, str, str]]:
    """(id, question, section html) for each FAQ question: a section with a heading below
    the page's <h1> and no sections inside (the pages nest questions at h2, h3 or h4)."""
    found = []
    heading = r'<section id="([^"]+)">\s*(?:<span id="[^"]*"></span>\s*)*<h([2-6])>(.*?)</h\2>'
    for match in re.finditer(heading, page, re.S):
        start, depth, position = match.start(), 0, match.start()
        for tag in re.finditer(r"<(/?)section\b", page[start:]):
            depth += -1 if tag.group(1) else 1
            if depth == 0:
                position = start + tag.end() + 1
                break
        if "<section" in page[match.end():position]:
            continue  # a group of questions, not a question
        question = html.unescape(re.sub(r"<[^>]+>", "", match.group(3))).rstrip("¶").strip()
        found.append((match.group(1), question, page[start:position]))
    return found


def build(html_root: Path, out: Path, set_path: Path) -> tuple[int, int, int]:
    corpus = out / CORPUS
    if corpus.exists():
        shutil.rmtree(corpus)
    paraphrased_by_id: dict[str, list[str]] = json.loads(
        PARAPHRASED_FILE.read_text(encoding="utf-8"))
    lines, pages = [], 0
    known = set()
    for name in FAQ_PAGES:
        source_page = (html_root / "faq" / f"{name}.html").read_text(encoding="utf-8")
        for section_id, question, body in _sections(source_page):
            target = corpus / "faq" / name / f"{section_id}.html"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(
                f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(question)}</title></head>\n<body>\n{body}\n</body></html>\n",
                encoding="utf-8")
            pages += 1
            source = f"{CORPUS}/faq/{name}/{section_id}.html"
            known.add(f"{name}/{section_id}")
            lines.append({"query": question, "relevant": [source], "kind": "heading"})
            lines.extend({"query": text, "relevant": [source], "kind": "paraphrase"}
                         for text in paraphrased_by_id.get(f"{name}/{section_id}", []))
    missing = sorted(set(paraphrased_by_id) - known)
    if missing:
        raise SystemExit(f"paraphrased queries for questions the FAQ does not have: {missing}")
    for folder in ("tutorial", "howto"):
        for page in sorted((html_root / folder).glob("*.html")):
            (corpus / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(page, corpus / folder / page.name)
            pages += 1
    set_path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
                        encoding="utf-8")
    paraphrased = sum(1 for line in lines if line["kind"] == "paraphrase")
    return pages, len(lines) - paraphrased, paraphrased


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=Path("/usr/share/doc/python3.11/html"))
    parser.add_argument("--out", type=Path, required=True, help="where to write python-docs/")
    parser.add_argument("--set", type=Path, default=SET, help="where to write the set")
    args = parser.parse_args()
    if not (args.html / "faq" / "general.html").is_file():
        raise SystemExit(f"no Python FAQ under {args.html}: apt-get install python3.11-doc, "
                         "or pass --html to an unpacked copy")
    pages, headings, paraphrased = build(args.html, args.out, args.set)
    print(f"{pages} pages in {args.out / CORPUS}; {headings} heading and {paraphrased} "
          f"paraphrased queries in {args.set}")


if __name__ == "__main__":
    main()
