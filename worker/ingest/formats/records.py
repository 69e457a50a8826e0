"""JSON and JSONL: a record (an object with "content" or "text") is one document.

A .json file holding one record is one document; an array of objects of which
some are records gives one per record and reports the others; any other JSON is
stored pretty-printed. Each non-blank JSONL line is one record. A bad record is
reported (with its line or item) and the rest of the file is kept; JSON nested
deeper than MAX_JSON_DEPTH is reported as such (a whole .json file, one JSONL line).
"""

from __future__ import annotations

import json
from typing import Any

from worker.documents import loads
from worker.errors import JsonTooDeep
from worker.ingest.items import Document, Parsed, Skipped, SourceFile


def read_json(file: SourceFile, text: str) -> Parsed:
    """One record, an array with records, or any other JSON value (stored pretty-printed)."""
    parsed = Parsed()
    if not text.strip():
        parsed.skipped.append(Skipped(file.source, "empty: no JSON value"))
        return parsed
    try:
        value = loads(text)
    except JsonTooDeep as exc:
        parsed.skipped.append(Skipped(file.source, str(exc)))
        return parsed
    except ValueError as exc:
        parsed.skipped.append(Skipped(file.source, f"invalid JSON: {exc}"))
        return parsed
    if _is_record(value):
        _add_record(file, value, None, "record", parsed)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value) \
            and any(_is_record(v) for v in value):
        for index, item in enumerate(value):
            where = f"item {index}"
            if _is_record(item):
                _add_record(file, item, _record_key(item, f"item={index}"), where, parsed)
            else:
                parsed.skipped.append(Skipped(f"{file.source}#item={index}",
                                              f'{where}: no "content" or "text"'))
    else:
        content = json.dumps(value, indent=2, ensure_ascii=False)
        parsed.documents.append(Document(file.source, file.path.stem, content, {}))
    return parsed


def read_jsonl(file: SourceFile, text: str) -> Parsed:
    """One record per non-blank line."""
    parsed = Parsed()
    lines = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1
        where = f"line {number}"
        try:
            value = loads(line)
        except JsonTooDeep as exc:
            parsed.skipped.append(Skipped(f"{file.source}#line={number}", f"{where}: {exc}"))
            continue
        except ValueError as exc:
            parsed.skipped.append(Skipped(f"{file.source}#line={number}",
                                          f"{where}: invalid JSON: {exc}"))
            continue
        if not _is_record(value):
            parsed.skipped.append(Skipped(f"{file.source}#line={number}",
                                          f'{where}: not an object with "content" or "text"'))
            continue
        _add_record(file, value, _record_key(value, f"line={number}"), where, parsed)
    if not lines:
        parsed.skipped.append(Skipped(file.source, "empty: no records"))
    return parsed


def _record_fields(value: dict[str, Any]) -> tuple[str | None, str, dict[str, Any]]:
    """(title, content, metadata) of a JSON record; other keys join the metadata."""
    content_key = "content" if "content" in value else "text"
    content = value.get(content_key)
    if not isinstance(content, str):
        raise ValueError(f'"{content_key}" must be a string')
    title = value.get("title")
    if title is not None and not isinstance(title, str):
        raise ValueError('"title" must be a string')
    metadata = value.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError('"metadata" must be an object')
    extra = {k: v for k, v in value.items() if k not in (content_key, "title", "metadata")}
    return title, content, {**extra, **metadata}


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and ("content" in value or "text" in value)


def _record_key(value: dict[str, Any], fallback: str) -> str:
    """`id=<id>` when the record has a string or integer id, else the fallback."""
    ident = value.get("id")
    if isinstance(ident, str | int) and not isinstance(ident, bool) and str(ident).strip():
        return f"id={ident}"
    return fallback


def _add_record(file: SourceFile, value: dict[str, Any], key: str | None, where: str,
                parsed: Parsed) -> None:
    source = file.source if key is None else f"{file.source}#{key}"
    try:
        title, content, metadata = _record_fields(value)
    except ValueError as exc:
        parsed.skipped.append(Skipped(source, f"{where}: {exc}"))
        return
    default_title = file.path.stem if key is None else f"{file.path.stem} ({where})"
    parsed.documents.append(Document(source, title or default_title, content, metadata))
