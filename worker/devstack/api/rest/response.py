"""Results as PostgREST answers them: rows built as one JSON array by PostgreSQL
(`json_agg`), then a response with `Content-Range`, the single-object form and the
status of the operation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from starlette.responses import Response

from worker.devstack.api.rest import grammar
from worker.devstack.api.rest.request import SINGLE_OBJECT, Call
from worker.errors import ApiError

JSON_TYPE = "application/json; charset=utf-8"


@dataclass
class Result:
    """Rows as JSON text (or nothing), their count, and the HTTP status."""

    status: int
    body: str | None
    rows: int
    total: int | None = None


def json_rows(conn: psycopg.Connection[Any], inner: sql.Composable, params: list[Any], *,
              source: sql.Composable | None = None) -> tuple[str, int]:
    """inner's rows as one JSON array, and their count; source is a data-modifying
    statement that inner reads as `pgrst_source` (its `returning *`)."""
    statement = sql.SQL(
        "select coalesce(json_agg(_s), '[]')::text as body, count(_s) as n from ({}) _s"
    ).format(inner)
    if source is not None:
        statement = sql.SQL("with pgrst_source as ({} returning *) {}").format(
            source, statement)
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return str(row["body"]), int(row["n"])


def check_single(call: Call, rows: int) -> None:
    """PGRST116 (406) if one object was asked for and there are not exactly one rows.
    Raised inside the request's transaction, it rolls back what the statement did."""
    if call.single and rows != 1:
        raise ApiError(406, "PGRST116", "JSON object requested, multiple (or no) rows returned",
                       details=f"The result contains {rows} rows")


def respond(call: Call, result: Result) -> Response:
    """The HTTP response for result: PGRST116 (406) if one object was asked for and the
    result is not exactly one row."""
    headers: dict[str, str] = {}
    if call.method in ("GET", "HEAD"):
        offset = grammar.non_negative("offset", call.param("offset")) or 0
        total = "*" if result.total is None else str(result.total)
        span = f"{offset}-{offset + result.rows - 1}" if result.rows else "*"
        headers["Content-Range"] = f"{span}/{total}"
    elif result.total is not None:
        headers["Content-Range"] = f"*/{result.total}"
    body = result.body
    if call.single and body is not None:
        check_single(call, result.rows)
        body = json.dumps(json.loads(body)[0])
    if body is None or call.method == "HEAD":
        return Response(status_code=result.status, headers=headers)
    return Response(body, status_code=result.status, headers=headers,
                    media_type=SINGLE_OBJECT if call.single else JSON_TYPE)
