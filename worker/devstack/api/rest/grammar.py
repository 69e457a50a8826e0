"""PostgREST's query grammar, turned into SQL: `select=`, filters, `order`, `limit`, `offset`.

Every identifier from the URL goes through `psycopg.sql.Identifier` and every
value becomes a query parameter, so nothing a client sends is spliced into SQL.
Supported subset (see docs/local-api.md): columns with `alias:` and `::cast`,
JSON paths `col->key` / `col->>key`; filters `eq neq lt lte gt gte like ilike
in is cs cd ov`, each optionally negated with `not.`; the logical filters
`or=(...)` and `and=(...)`, nested and negated; embedded resources
`relation(columns)` (built by resource_embed.py, which finds the relationship).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from worker.errors import ApiError

#: Query parameters that are not filters.
RESERVED = frozenset({"select", "order", "limit", "offset", "columns", "on_conflict"})

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_COLUMN = re.compile(rf"^({_NAME})((?:->>?[A-Za-z0-9_]+)*)$")
_ARROW = re.compile(r"(->>?)([A-Za-z0-9_]+)")
_OPERATORS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">=",
              "like": "like", "ilike": "ilike", "cs": "@>", "cd": "<@", "ov": "&&"}
_IS_VALUES = {"null": "null", "not_null": "not null", "true": "true", "false": "false",
              "unknown": "unknown"}


def parse_error(message: str, details: str | None = None) -> ApiError:
    """PostgREST's 400 for a URL it cannot parse."""
    return ApiError(400, "PGRST100", message, details=details)


@dataclass
class Fragment:
    """A piece of SQL and the parameters of its placeholders, in order."""

    sql: sql.Composable
    params: list[Any] = field(default_factory=list)


def column_expr(text: str) -> tuple[sql.Composable, str]:
    """A column or JSON path as SQL, and the name PostgREST gives it in results."""
    match = _COLUMN.match(text.strip())
    if match is None:
        raise parse_error(f'"failed to parse column {text!r}"',
                          "expected a column name, optionally with ->key or ->>key")
    name, path = match.groups()
    expr: sql.Composable = sql.Identifier(name)
    label = name
    for arrow, key in _ARROW.findall(path):
        expr = sql.SQL("({} {} {})").format(expr, sql.SQL(arrow), sql.Literal(key))
        label = key
    return expr, label


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses and double quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _balanced(text: str) -> bool:
    """Whether text's parentheses (outside double quotes) pair up, and its quotes close."""
    depth, quoted = 0, False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
            if depth < 0:
                return False
    return depth == 0 and not quoted


#: An embedded resource in `select=`: `[alias:]relation(select list)`.
_RESOURCE_EMBED = re.compile(rf"^(?:({_NAME}):)?({_NAME})\((.*)\)$", re.DOTALL)

#: Builds the SQL of one resource embed (PostgREST's term for a related table in
#: `select=`): (relation, its select list text) -> expression.
ResourceEmbed = Callable[[str, str], sql.Composable]


def select_list(value: str | None, embed: ResourceEmbed | None = None) -> sql.Composable:
    """The `select=` parameter as a select list (default `*`).

    Items like `answers(*)` or `alias:answers(id,content)` embed a related
    table; embed builds each one (None: resource embeds are refused, e.g. for
    function results).
    """
    if not value or value.strip() == "*":
        return sql.SQL("*")
    if not _balanced(value):
        raise parse_error(f'"failed to parse select parameter ({value})"',
                          "unbalanced parentheses or quotes")
    items: list[sql.Composable] = []
    for raw in _split_top(value):
        item = raw.strip()
        if "(" in item:
            nested = _RESOURCE_EMBED.match(item)
            if nested is None:
                raise parse_error(f'"failed to parse select parameter ({item})"',
                                  "embed a related table as relation(columns) or "
                                  "alias:relation(columns); hints (!) are not supported")
            if embed is None:
                raise parse_error("resource embedding is only supported on tables and views",
                                  f"in select item {item!r}")
            alias, relation, inner = nested.groups()
            items.append(sql.SQL("{} as {}").format(embed(relation, inner),
                                                     sql.Identifier(alias or relation)))
            continue
        if item == "*":
            items.append(sql.SQL("*"))
            continue
        alias = None
        if ":" in item.replace("::", "\0"):
            alias, item = item.replace("::", "\0").split(":", 1)
            alias, item = alias.replace("\0", "::"), item.replace("\0", "::")
        cast = None
        if "::" in item:
            item, cast = item.split("::", 1)
            if not re.fullmatch(_NAME, cast):
                raise parse_error(f"bad cast {cast!r}", "casts are type names like ::text")
        expr, label = column_expr(item)
        if cast is not None:
            expr = sql.SQL("{}::{}").format(expr, sql.Identifier(cast))
        items.append(sql.SQL("{} as {}").format(expr, sql.Identifier(alias or label)))
    return sql.SQL(", ").join(items)


def _in_values(text: str) -> list[str]:
    if not (text.startswith("(") and text.endswith(")")):
        raise parse_error(f"bad in list {text!r}", "write in.(a,b,c)")
    inner = text[1:-1]
    if not inner:
        return []
    values = []
    for part in _split_top(inner):
        part = part.strip()
        if len(part) >= 2 and part.startswith('"') and part.endswith('"'):
            part = part[1:-1]
        values.append(part)
    return values


def condition(column: str, value: str) -> Fragment:
    """One filter `column=[not.]op.value` as a SQL condition."""
    expr, _ = column_expr(column)
    negate = value.startswith("not.")
    if negate:
        value = value[4:]
    op, dot, operand = value.partition(".")
    if not dot:
        raise parse_error(f'"failed to parse filter ({value})"', f"on column {column!r}")
    if op in _OPERATORS:
        if op in ("like", "ilike"):
            operand = operand.replace("*", "%")
        frag = Fragment(sql.SQL("{} {} %s").format(expr, sql.SQL(_OPERATORS[op])), [operand])
    elif op == "in":
        values = _in_values(operand)
        if not values:
            frag = Fragment(sql.SQL("false"))
        else:
            holders = sql.SQL(", ").join(sql.Placeholder() for _ in values)
            frag = Fragment(sql.SQL("{} in ({})").format(expr, holders), list(values))
    elif op == "is":
        if operand not in _IS_VALUES:
            raise parse_error(f'"failed to parse filter (is.{operand})"',
                              "is. takes null, not_null, true, false or unknown")
        frag = Fragment(sql.SQL("{} is {}").format(expr, sql.SQL(_IS_VALUES[operand])))
    else:
        raise parse_error(f'"failed to parse filter ({value})"',
                          f"operator {op!r} is not supported by suparag's local API")
    if negate:
        frag.sql = sql.SQL("not ({})").format(frag.sql)
    return frag


_LOGIC = re.compile(r"^(not\.)?(or|and)(\(.*\))$", re.DOTALL)
#: How deep `or=(and(or(...)))` may nest: far beyond real use, short of recursion limits.
_MAX_LOGIC_DEPTH = 16


def logical(kind: str, body: str, *, negate: bool = False, depth: int = 0) -> Fragment:
    """`or=(a.eq.1,and(b.gt.2,c.is.null))` and the like, as one parenthesised condition.

    Items are `column.[not.]op.value` or nested `[not.]or(...)` / `[not.]and(...)`;
    a value may be double-quoted to hold commas or parentheses.
    """
    if depth > _MAX_LOGIC_DEPTH:
        raise parse_error("logical filters nest too deeply",
                          f"at most {_MAX_LOGIC_DEPTH} levels of or()/and()")
    if not (body.startswith("(") and body.endswith(")")) or body == "()" \
            or not _balanced(body):
        raise parse_error(f'"failed to parse logic tree ({body})"',
                          f"write {kind}=(column.op.value,...)")
    parts: list[Fragment] = []
    for raw in _split_top(body[1:-1]):
        item = raw.strip()
        nested = _LOGIC.match(item)
        if nested is not None:
            parts.append(logical(nested[2], nested[3], negate=bool(nested[1]), depth=depth + 1))
            continue
        column, dot, rest = item.partition(".")
        if not dot:
            raise parse_error(f'"failed to parse logic tree ({body})"',
                              f"item {item!r} is not column.op.value")
        op, dot, operand = rest.removeprefix("not.").partition(".")
        if len(operand) >= 2 and operand.startswith('"') and operand.endswith('"') \
                and op != "in":
            rest = rest[:len(rest) - len(operand)] + operand[1:-1]
        parts.append(condition(column, rest))
    joined = sql.SQL("({})").format(sql.SQL(f" {kind} ").join(p.sql for p in parts))
    return Fragment(sql.SQL("not {}").format(joined) if negate else joined,
                    [v for p in parts for v in p.params])


def where_clause(params: Iterable[tuple[str, str]], *, skip: Iterable[str] = ()) -> Fragment:
    """`where` from the filter parameters (an empty fragment if there are none)."""
    skipped = set(skip)
    parts: list[Fragment] = []
    for key, value in params:
        if key in RESERVED or key in skipped:
            continue
        if key in ("or", "and", "not.or", "not.and"):
            parts.append(logical(key.removeprefix("not."), value,
                                 negate=key.startswith("not.")))
            continue
        parts.append(condition(key, value))
    if not parts:
        return Fragment(sql.SQL(""))
    return Fragment(
        sql.SQL(" where ") + sql.SQL(" and ").join(p.sql for p in parts),
        [v for p in parts for v in p.params],
    )


def order_clause(value: str | None) -> sql.Composable:
    """`order=a.desc.nullslast,b` as an `order by`."""
    if not value:
        return sql.SQL("")
    terms: list[sql.Composable] = []
    for raw in value.split(","):
        column, *mods = raw.strip().split(".")
        expr, _ = column_expr(column)
        words: list[str] = []
        for mod in mods:
            if mod in ("asc", "desc"):
                words.append(mod)
            elif mod in ("nullsfirst", "nullslast"):
                words.append("nulls " + mod[5:])
            else:
                raise parse_error(f'"failed to parse order ({raw})"',
                                  "use column.asc|desc[.nullsfirst|nullslast]")
        terms.append(sql.SQL(" ").join([expr, *(sql.SQL(w) for w in words)]))
    return sql.SQL(" order by ") + sql.SQL(", ").join(terms)


def non_negative(name: str, value: str | None) -> int | None:
    """`limit` / `offset` as an int: ASCII digits only (`²` passes str.isdigit)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise parse_error(f'"failed to parse {name} ({value})"', f"{name} is a whole number")
    return int(value)


def page_clause(limit: int | None, offset: int | None) -> sql.Composable:
    parts: list[sql.Composable] = []
    if limit is not None:
        parts.append(sql.SQL(" limit {}").format(sql.Literal(limit)))
    if offset:
        parts.append(sql.SQL(" offset {}").format(sql.Literal(offset)))
    return sql.Composed(parts)
