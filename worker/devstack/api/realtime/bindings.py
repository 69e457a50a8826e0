"""The `postgres_changes` bindings of a Realtime join: which event of which table,
under which filter, and the id the client matches events on."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import SubscriptionError

EVENTS = frozenset({"*", "INSERT", "UPDATE", "DELETE"})
#: Filter operators and their SQL; `in` is handled apart.
OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
MAX_IN_VALUES = 100


@dataclass(frozen=True)
class Filter:
    """`column=op.value`; `in` takes `(a,b,c)`."""

    column: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Filter:
        column, eq, rest = text.partition("=")
        op, dot, value = rest.partition(".")
        if not (eq and dot and column.strip()):
            raise SubscriptionError(f"invalid filter {text!r}: expected column=op.value")
        if op == "in":
            inner = value.strip()
            if not (inner.startswith("(") and inner.endswith(")")):
                raise SubscriptionError(f"invalid filter {text!r}: `in` takes (a,b,c)")
            values = tuple(v.strip().strip('"') for v in inner[1:-1].split(","))
            if len(values) > MAX_IN_VALUES:
                raise SubscriptionError(f"invalid filter {text!r}: `in` takes at most "
                                        f"{MAX_IN_VALUES} values")
            return cls(column.strip(), op, values)
        if op not in OPERATORS:
            raise SubscriptionError(f"invalid filter {text!r}: operator {op!r} is not one of "
                                    "eq, neq, lt, lte, gt, gte, in")
        return cls(column.strip(), op, (value,))


@dataclass(frozen=True)
class Binding:
    """One entry of `config.postgres_changes`, with the id the client matches on."""

    id: int
    event: str
    schema: str
    table: str | None
    filter: Filter | None
    params: Mapping[str, Any]

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Binding:
        event = str(params.get("event", "*")).upper()
        if event not in EVENTS:
            raise SubscriptionError(f"invalid event {params.get('event')!r}: "
                                    "expected INSERT, UPDATE, DELETE or *")
        table = params.get("table")
        raw_filter = params.get("filter")
        return cls(id=binding_id(params), event=event, schema=str(params.get("schema") or "public"),
                   table=None if table in (None, "*") else str(table),
                   filter=Filter.parse(str(raw_filter)) if raw_filter else None,
                   params=dict(params))

    def wants(self, schema: str, table: str, op: str) -> bool:
        return (self.schema in ("*", schema) and self.table in (None, table)
                and self.event in ("*", op))


def binding_id(params: Mapping[str, Any]) -> int:
    """A stable id for a binding, like upstream's `:erlang.phash2(params)` (never 0:
    the Python client ignores events for a falsy id)."""
    digest = zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode()) & 0x7FFFFFF
    return digest or 1
