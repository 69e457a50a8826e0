"""`/rest/v1/rpc/<function>`: a function in `public` called with named arguments from
the JSON body (POST) or the query string (GET), as PostgREST calls it."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from worker.devstack.api.rest import catalog, grammar
from worker.devstack.api.rest.catalog import FunctionSpec
from worker.devstack.api.rest.request import Call
from worker.devstack.api.rest.response import Result, check_single, json_rows


def arguments(call: Call) -> dict[str, Any]:
    """The named arguments: the body's keys on POST (a non-object body is the one
    unnamed argument, under ""), else the query parameters that are not grammar."""
    if call.method == "POST":
        if call.body is None:
            return {}
        if isinstance(call.body, dict):
            return call.body
        return {"": call.body}
    return {k: v for k, v in call.params if k not in grammar.RESERVED}


def read_only(call: Call, spec: FunctionSpec) -> bool:
    """GET/HEAD, and STABLE or IMMUTABLE functions, run in a read-only transaction."""
    return call.method in ("GET", "HEAD") or spec.volatility in ("s", "i")


def run(conn: psycopg.Connection[Any], call: Call, spec: FunctionSpec,
        args: dict[str, Any]) -> Result:
    """Call spec with args inside the caller's transaction on conn."""
    body = Jsonb(args)
    exprs: list[sql.Composable] = []
    params: list[Any] = []
    for arg in spec.args:
        if arg.name == "":
            # One unnamed json/jsonb parameter receives the whole body (PostgREST).
            exprs.append(sql.SQL("%s::{}").format(sql.SQL(arg.type)))
            params.append(Jsonb(call.body if call.method == "POST" else args))
            continue
        if arg.name not in args:
            continue
        key = sql.Literal(arg.name)
        if arg.is_json:
            value = sql.SQL("(%s::jsonb -> {})::{}").format(key, sql.SQL(arg.type))
        elif arg.is_array:
            value = sql.SQL(
                "(case jsonb_typeof(%s::jsonb -> {k}) when 'array'"
                " then array(select jsonb_array_elements_text(%s::jsonb -> {k}))::{t}"
                " else (%s::jsonb ->> {k})::{t} end)"
            ).format(k=key, t=sql.SQL(arg.type))
            params.extend([body, body])
        else:
            value = sql.SQL("(%s::jsonb ->> {})::{}").format(key, sql.SQL(arg.type))
        params.append(body)
        exprs.append(sql.SQL("{} => {}").format(sql.Identifier(arg.name), value))
    fn = sql.SQL("{}({})").format(sql.Identifier(catalog.SCHEMA, spec.name),
                                  sql.SQL(", ").join(exprs))
    if spec.returns == "void":
        conn.execute(sql.SQL("select {}").format(fn), params)
        return Result(204, None, 0)
    if spec.returns == "scalar":
        row = conn.execute(sql.SQL("select to_json({})::text as body").format(fn),
                           params).fetchone()
        assert row is not None
        return Result(200, str(row["body"]), 1)
    # On GET the arguments are query parameters too; they are not filters.
    skip = args if call.method != "POST" else ()
    where = grammar.where_clause(call.params, skip=skip)
    offset = grammar.non_negative("offset", call.param("offset"))
    inner = sql.SQL("select {} from {} _f{}{}{}").format(
        grammar.select_list(call.param("select")), fn, where.sql,
        grammar.order_clause(call.param("order")), grammar.page_clause(call.limit, offset))
    rows_body, n = json_rows(conn, inner, params + where.params)
    check_single(call, n)  # in the transaction: a volatile function's work is undone
    if spec.returns == "row" and not call.single:
        # A function returning one composite answers with an object.
        rows = json.loads(rows_body)
        return Result(200, json.dumps(rows[0] if rows else None), n)
    return Result(200, rows_body, n)
