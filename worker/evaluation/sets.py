"""Evaluation sets: JSON Lines of queries and the documents that answer them.

One object per line (blank lines and lines starting with `//` are skipped):

    {"query": "...", "relevant": ["<document source or id>", {"source": "...", "grade": 2}],
     "as": "<user email or id>", "kind": "paraphrase"}

`relevant` names documents by `source` (what `suparag ingest` stores) or id,
with an optional grade (1..MAX_GRADE, default 1). `as` evaluates that line as
another user than the run's; `kind` is a free label that runs report
separately (e.g. paraphrased vs heading-like queries). Unknown keys are errors,
so a typo (`"relevent"`) is not a query with nothing relevant.

A set is read whole, so its size is bounded: MAX_SET_BYTES, MAX_QUERIES, and
per line MAX_QUERY_CHARS, MAX_RELEVANT and worker.documents.MAX_JSON_DEPTH.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.documents import loads
from worker.errors import EvalSetInvalid

MAX_SET_BYTES = 16 * 1024 * 1024
MAX_QUERIES = 20_000
MAX_QUERY_CHARS = 4_000
MAX_RELEVANT = 1_000
MAX_GRADE = 10
_KEYS = {"query", "relevant", "as", "kind"}


@dataclass(frozen=True)
class Relevant:
    """A document that answers a query: its source or id, and how well (grade >= 1)."""

    ref: str
    grade: int = 1


@dataclass(frozen=True)
class EvalQuery:
    line: int
    query: str
    relevant: tuple[Relevant, ...]
    as_user: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class EvalSet:
    """A parsed set; `digest` (sha256 of the file's bytes) identifies it in the run history."""

    name: str
    digest: str
    queries: tuple[EvalQuery, ...]


def load_set(path: Path) -> EvalSet:
    """Read and check a set file; EvalSetInvalid names the file and line of any problem."""
    try:
        size = path.stat().st_size
        if size > MAX_SET_BYTES:
            raise EvalSetInvalid(f"{path}: {size} bytes is more than an evaluation set may hold "
                                 f"({MAX_SET_BYTES}): split it into several sets")
        data = path.read_bytes()
    except OSError as exc:
        raise EvalSetInvalid(f"cannot read the evaluation set {path}: {exc.strerror}") from exc
    return parse_set(data, name=path.name)


def parse_set(data: bytes, *, name: str) -> EvalSet:
    """A set from the bytes of a JSONL file called name."""
    if len(data) > MAX_SET_BYTES:
        raise EvalSetInvalid(f"{name}: more than {MAX_SET_BYTES} bytes: split it into several sets")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EvalSetInvalid(f"{name}: not UTF-8 (byte {exc.start}): save it as UTF-8") from exc
    queries: list[EvalQuery] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        if len(queries) == MAX_QUERIES:
            raise EvalSetInvalid(f"{name}: more than {MAX_QUERIES} queries: split the set")
        queries.append(_parse_line(line, where=f"{name}:{number}", number=number))
    if not queries:
        raise EvalSetInvalid(f"{name}: no queries: write one JSON object per line, e.g. "
                             '{"query": "how do refunds work", "relevant": ["docs/refunds.md"]}')
    return EvalSet(name=name, digest=hashlib.sha256(data).hexdigest(), queries=tuple(queries))


def _parse_line(line: str, *, where: str, number: int) -> EvalQuery:
    try:
        value = loads(line)
    except ValueError as exc:  # JsonTooDeep is a ValueError too
        raise EvalSetInvalid(f"{where}: {exc}") from exc
    if not isinstance(value, dict):
        raise EvalSetInvalid(f"{where}: expected a JSON object with \"query\" and \"relevant\"")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise EvalSetInvalid(f"{where}: unknown key(s) {', '.join(unknown)}: "
                             f"a line may have {', '.join(sorted(_KEYS))}")
    query = value.get("query")
    if not isinstance(query, str) or not query.strip():
        raise EvalSetInvalid(f"{where}: \"query\" must be a non-empty string")
    if len(query) > MAX_QUERY_CHARS:
        raise EvalSetInvalid(f"{where}: the query is longer than {MAX_QUERY_CHARS} characters")
    relevant = value.get("relevant")
    if not isinstance(relevant, list) or not relevant:
        raise EvalSetInvalid(f"{where}: \"relevant\" must be a non-empty list of document "
                             "sources or ids: a query with nothing relevant cannot be scored")
    if len(relevant) > MAX_RELEVANT:
        raise EvalSetInvalid(f"{where}: more than {MAX_RELEVANT} relevant documents")
    items = [_relevant(item, where) for item in relevant]
    refs = [item.ref for item in items]
    if len(set(refs)) != len(refs):
        raise EvalSetInvalid(f"{where}: a document is listed twice in \"relevant\"")
    return EvalQuery(line=number, query=query, relevant=tuple(items),
                     as_user=_optional_text(value, "as", where),
                     kind=_optional_text(value, "kind", where))


def _relevant(item: Any, where: str) -> Relevant:
    if isinstance(item, str) and item.strip():
        return Relevant(item)
    if isinstance(item, dict):
        extra = sorted(set(item) - {"source", "id", "grade"})
        ref = item.get("source", item.get("id"))
        grade = item.get("grade", 1)
        if extra or ("source" in item and "id" in item):
            raise EvalSetInvalid(f"{where}: a relevant document is {{\"source\" or \"id\", "
                                 "\"grade\"}")
        if isinstance(ref, str) and ref.strip() and type(grade) is int \
                and 1 <= grade <= MAX_GRADE:
            return Relevant(ref, grade)
        raise EvalSetInvalid(f"{where}: a relevant document needs a \"source\" (or \"id\") "
                             f"string and a whole \"grade\" from 1 to {MAX_GRADE}")
    raise EvalSetInvalid(f"{where}: each relevant document is a source or id string, or "
                         '{"source": ..., "grade": 2}')


def _optional_text(value: dict[str, Any], key: str, where: str) -> str | None:
    item = value.get(key)
    if item is None:
        return None
    if not isinstance(item, str) or not item.strip():
        raise EvalSetInvalid(f"{where}: \"{key}\" must be a non-empty string")
    return item
