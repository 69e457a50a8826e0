"""What a public.documents row may hold, written once for ingest, search and the demo.

The sharing levels, and the rule that turns `key=value` pairs into a metadata
object: `suparag ingest --metadata` tags documents with it and `suparag search
--filter` (and `ask --filter`) looks them up with it, so a filter finds what was
tagged only while both read a pair the same way. Values must be what PostgreSQL
stores: strict JSON (jsonb refuses NaN and Infinity) and text without NULs or
lone surrogates, nested at most MAX_JSON_DEPTH deep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from worker.errors import ConfigError, JsonTooDeep

#: Who may read a document; the documents table's check constraint holds the same three.
VISIBILITIES = ("private", "team", "public")

#: How deeply arrays and objects may nest in JSON we read (serde_json's default limit).
#: Parsing, cleaning and storing a value each recurse once per level, so a record
#: nested thousands deep would exhaust Python's stack (RecursionError) on the way in.
MAX_JSON_DEPTH = 128

_SURROGATES = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str) -> Any:
    """Strict JSON: NaN and Infinity, which jsonb refuses, are errors (ValueError), and
    nesting deeper than MAX_JSON_DEPTH is JsonTooDeep (also a ValueError)."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise JsonTooDeep(_TOO_DEEP) from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise JsonTooDeep(_TOO_DEEP)
    return value


_TOO_DEEP = (f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects: "
             "flatten it to ingest it")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than limit levels (walked without recursion)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False


def storable(value: Any) -> tuple[Any, int]:
    """(value, count): NULs removed and lone surrogates replaced, in strings, lists and dicts.

    PostgreSQL text and jsonb can hold neither; count says how many were changed.
    """
    if isinstance(value, str):
        bad = value.count("\x00") + len(_SURROGATES.findall(value))
        if not bad:
            return value, 0
        return _SURROGATES.sub("\ufffd", value.replace("\x00", "")), bad
    if isinstance(value, dict):
        total, out = 0, {}
        for key, item in value.items():
            clean_key, n = storable(key)
            clean_item, m = storable(item)
            out[clean_key] = clean_item
            total += n + m
        return out, total
    if isinstance(value, list):
        total, items = 0, []
        for item in value:
            clean_item, n = storable(item)
            items.append(clean_item)
            total += n
        return items, total
    return value, 0


def parse_pairs(pairs: Iterable[str], *, option: str) -> dict[str, Any]:
    """`key=value` pairs as a metadata object; a value is JSON when it parses (2024, true),
    else text. `option` names the flag in the error (`metadata`, `filter`).
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {pair!r} is not key=value: e.g. --{option} lang=en")
        try:
            result[key] = loads(raw)
        except ValueError:
            result[key] = raw
    clean, _ = storable(result)
    return dict(clean)
