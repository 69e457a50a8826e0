"""Table operations of `/rest/v1/<table>`: read (GET/HEAD), insert and upsert (POST),
update (PATCH) and delete, each one statement run as the caller, so RLS applies."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from worker.devstack.api.rest import catalog, grammar
from worker.devstack.api.rest.request import Call
from worker.devstack.api.rest.resource_embed import OUTER, ResourceEmbeds
from worker.devstack.api.rest.response import Result, check_single, json_rows
from worker.errors import ApiError


def run(conn: psycopg.Connection[Any], call: Call, table: str) -> Result:
    """The operation call asks of table, inside the caller's transaction on conn."""
    columns = catalog.columns(conn, table)
    target = sql.Identifier(catalog.SCHEMA, table)
    select = grammar.select_list(call.param("select"),
                                 ResourceEmbeds(conn, table, OUTER).build)
    where = grammar.where_clause(call.params)
    if call.method in ("PATCH", "DELETE") and where.sql == sql.SQL(""):
        _refuse_unfiltered(call.method)
    if call.method in ("GET", "HEAD"):
        offset = grammar.non_negative("offset", call.param("offset"))
        inner = sql.SQL("select {} from {} {}{}{}{}").format(
            select, target, sql.Identifier(OUTER), where.sql,
            grammar.order_clause(call.param("order")), grammar.page_clause(call.limit, offset))
        body, n = json_rows(conn, inner, where.params)
        check_single(call, n)
        total = _count(conn, target, where) if call.prefer.get("count") else None
        return Result(200, body, n, total)
    if call.method == "POST":
        return _insert(conn, call, table, columns, select)
    if call.method == "PATCH":
        return _update(conn, call, table, columns, select, where)
    statement = sql.SQL("delete from {}{}").format(target, where.sql)
    return _mutate(conn, call, statement, where.params, select, 200)


def _refuse_unfiltered(method: str) -> None:
    """Supabase loads pg-safeupdate for API requests: an update or delete without a filter
    fails with its error (SQLSTATE 21000) instead of changing every row the caller may."""
    verb = "UPDATE" if method == "PATCH" else "DELETE"
    raise ApiError(400, "21000", f"{verb} requires a WHERE clause",
                   hint="Add a filter (e.g. ?id=eq.<id>). To change every row you may, say "
                        "so with a filter that matches them all, e.g. ?id=not.is.null.")


def _count(conn: psycopg.Connection[Any], source: sql.Composable,
           where: grammar.Fragment) -> int:
    row = conn.execute(sql.SQL("select count(*) as n from {}{}").format(source, where.sql),
                       where.params).fetchone()
    assert row is not None
    return int(row["n"])


def _mutate(conn: psycopg.Connection[Any], call: Call, statement: sql.Composed,
            params: list[Any], select: sql.Composable, status: int) -> Result:
    """Run an insert/update/delete, returning rows if `Prefer: return=representation`.

    With `Accept: application/vnd.pgrst.object+json` a statement that touched other
    than one row is a 406 raised here, inside the transaction, so it is undone
    (PostgREST does the same).
    """
    wants_rows = call.prefer.get("return") == "representation"
    count = bool(call.prefer.get("count"))
    if not wants_rows:
        cursor = conn.execute(statement, params)
        check_single(call, cursor.rowcount)
        total = cursor.rowcount if count else None
        return Result(201 if status == 201 else 204, None, cursor.rowcount, total)
    inner = sql.SQL("select {} from pgrst_source {}").format(select, sql.Identifier(OUTER))
    body, n = json_rows(conn, inner, params, source=statement)
    check_single(call, n)
    return Result(status, body, n, n if count else None)


def _body_columns(call: Call, table: str, columns: list[str]) -> list[str]:
    rows = call.body if isinstance(call.body, list) else [call.body]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ApiError(400, "PGRST102", "Empty or invalid json",
                       details="send a JSON object, or an array of objects")
    named = call.param("columns")
    wanted = ([c.strip().strip('"') for c in named.split(",")] if named
              else list(dict.fromkeys(k for r in rows for k in r)))
    for name in wanted:
        if name not in columns:
            raise ApiError(400, "PGRST204", f"Could not find the '{name}' column of "
                           f"'{table}' in the schema cache")
    return wanted


def _insert(conn: psycopg.Connection[Any], call: Call, table: str, columns: list[str],
            select: sql.Composable) -> Result:
    names = _body_columns(call, table, columns)
    rows = call.body if isinstance(call.body, list) else [call.body]
    target = sql.Identifier(catalog.SCHEMA, table)
    idents = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    statement = sql.SQL(
        "insert into {} ({}) select {} from jsonb_populate_recordset(null::{}, %s) _r"
    ).format(target, idents, idents, target)
    resolution = call.prefer.get("resolution")
    if resolution in ("merge-duplicates", "ignore-duplicates"):
        keys = _conflict_columns(conn, call, table)
        action = (sql.SQL("nothing") if resolution == "ignore-duplicates" else
                  sql.SQL("update set ") + sql.SQL(", ").join(
                      sql.SQL("{} = excluded.{}").format(sql.Identifier(n), sql.Identifier(n))
                      for n in names))
        statement = statement + sql.SQL(" on conflict ({}) do {}").format(
            sql.SQL(", ").join(sql.Identifier(k) for k in keys), action)
    return _mutate(conn, call, statement, [Jsonb(rows)], select, 201)


def _conflict_columns(conn: psycopg.Connection[Any], call: Call, table: str) -> list[str]:
    """`on_conflict=a,b`, else the primary key."""
    named = call.param("on_conflict")
    if named:
        return [c.strip().strip('"') for c in named.split(",")]
    return catalog.primary_key(conn, table)


def _update(conn: psycopg.Connection[Any], call: Call, table: str, columns: list[str],
            select: sql.Composable, where: grammar.Fragment) -> Result:
    if not isinstance(call.body, dict):
        raise ApiError(400, "PGRST102", "Empty or invalid json",
                       details="PATCH takes one JSON object of new values")
    names = _body_columns(call, table, columns)
    target = sql.Identifier(catalog.SCHEMA, table)
    idents = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    statement = sql.SQL(
        "update {} set ({}) = (select {} from jsonb_populate_record(null::{}, %s) _r){}"
    ).format(target, idents, idents, target, where.sql)
    if len(names) == 1:  # `set (a) = (select ...)` needs a row of two or more
        statement = sql.SQL(
            "update {} set {} = (select {} from jsonb_populate_record(null::{}, %s) _r){}"
        ).format(target, idents, idents, target, where.sql)
    return _mutate(conn, call, statement, [Jsonb(call.body), *where.params], select, 200)
