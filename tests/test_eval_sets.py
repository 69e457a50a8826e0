"""Evaluation set files: what a line may hold, and errors that name the line."""

from __future__ import annotations

import hashlib
import json

import pytest

from worker.errors import ConfigError, EvalSetInvalid
from worker.evaluation.sets import MAX_QUERIES, Relevant, load_set, parse_set


def lines(*items):
    return ("\n".join(json.dumps(i) if not isinstance(i, str) else i for i in items)
            + "\n").encode()


def test_a_set_with_grades_users_kinds_and_comments():
    data = lines(
        "// hand-written",
        {"query": "how do refunds work", "relevant": ["docs/refunds.md"]},
        "",
        {"query": "refund window", "relevant": [{"source": "docs/refunds.md", "grade": 2},
                                                {"id": "5e0c7f58-0000-4000-8000-000000000000"}],
         "as": "alice@example.com", "kind": "paraphrase"},
    )
    evalset = parse_set(data, name="s.jsonl")
    assert evalset.digest == hashlib.sha256(data).hexdigest()
    first, second = evalset.queries
    assert (first.line, first.relevant, first.as_user, first.kind) == (
        2, (Relevant("docs/refunds.md"),), None, None)
    assert second.line == 4
    assert second.relevant == (Relevant("docs/refunds.md", 2),
                               Relevant("5e0c7f58-0000-4000-8000-000000000000"))
    assert (second.as_user, second.kind) == ("alice@example.com", "paraphrase")


@pytest.mark.parametrize(("line", "words"), [
    ('{"query": "q", "relevent": ["a"]}', "unknown key(s) relevent"),
    ('{"query": "q", "relevant": []}', "nothing relevant cannot be scored"),
    ('{"query": "  ", "relevant": ["a"]}', '"query" must be a non-empty string'),
    ('{"query": "q", "relevant": [{"source": "a", "grade": 0}]}', "grade"),
    ('{"query": "q", "relevant": [{"source": "a", "grade": 1.5}]}', "grade"),
    ('{"query": "q", "relevant": [{"source": "a", "id": "b"}]}', '"source" or "id"'),
    ('{"query": "q", "relevant": ["a", "a"]}', "listed twice"),
    ('{"query": "q", "relevant": [3]}', "source or id string"),
    ('{"query": "q", "relevant": ["a"], "as": 7}', '"as" must be a non-empty string'),
    ('["q"]', "expected a JSON object"),
    ('{"query": "q", "relevant": ["a"]', "Expecting"),
    ('{"query": "q", "relevant": ["a"], "kind": ' + "[" * 200 + "]" * 200 + "}",
     "nested deeper"),
])
def test_bad_lines_are_refused_with_file_and_line(line, words):
    data = lines({"query": "fine", "relevant": ["a"]}, line)
    with pytest.raises(EvalSetInvalid) as caught:
        parse_set(data, name="s.jsonl")
    assert str(caught.value).startswith("s.jsonl:2: ")
    assert words in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_empty_unreadable_and_oversized_sets(tmp_path, monkeypatch):
    with pytest.raises(EvalSetInvalid, match="no queries"):
        parse_set(b"\n// nothing\n", name="e.jsonl")
    with pytest.raises(EvalSetInvalid, match="not UTF-8"):
        parse_set(b'{"query": "\xff"}\n', name="b.jsonl")
    with pytest.raises(EvalSetInvalid, match="cannot read the evaluation set"):
        load_set(tmp_path / "missing.jsonl")
    many = lines(*[{"query": f"q{i}", "relevant": ["a"]} for i in range(MAX_QUERIES + 1)])
    with pytest.raises(EvalSetInvalid, match=f"more than {MAX_QUERIES} queries"):
        parse_set(many, name="m.jsonl")
    monkeypatch.setattr("worker.evaluation.sets.MAX_SET_BYTES", 10)
    path = tmp_path / "big.jsonl"
    path.write_bytes(lines({"query": "q", "relevant": ["a"]}))
    with pytest.raises(EvalSetInvalid, match="split it"):
        load_set(path)
