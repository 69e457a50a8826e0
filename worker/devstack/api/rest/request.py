"""Reading a `/rest/v1` request, before any database work: the caller's claims, the
`Prefer` header, the schema profile and the JSON body, as one `Call`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from worker.devstack.api.context import request_claims
from worker.devstack.api.keys import ProjectKeys
from worker.devstack.api.limits import DEFAULT_MAX_ROWS, MAX_REST_BODY
from worker.devstack.api.rest import grammar
from worker.devstack.api.rest.catalog import SCHEMA
from worker.edge.limits import read_json
from worker.errors import ApiError

#: The `Accept` type that asks for one object rather than an array.
SINGLE_OBJECT = "application/vnd.pgrst.object+json"


@dataclass
class Call:
    """What one REST request asks for, parsed before any database work."""

    method: str
    path: str
    headers: dict[str, str]
    params: list[tuple[str, str]]
    claims: dict[str, Any]
    prefer: dict[str, str]
    body: Any = None
    #: Rows one read may return (PostgREST's `db-max-rows`, the CLI's `[api] max_rows`).
    max_rows: int = DEFAULT_MAX_ROWS

    @property
    def role(self) -> str:
        return str(self.claims.get("role", "anon"))

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k == name), None)

    @property
    def limit(self) -> int:
        """`limit=`, capped at max_rows as PostgREST caps it (no limit: max_rows)."""
        asked = grammar.non_negative("limit", self.param("limit"))
        return self.max_rows if asked is None else min(asked, self.max_rows)

    @property
    def single(self) -> bool:
        return SINGLE_OBJECT in self.headers.get("accept", "")


def parse_prefer(header: str) -> dict[str, str]:
    """`Prefer: return=representation, count=exact` as {"return": ..., "count": ...}."""
    prefer: dict[str, str] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key:
            prefer[key] = value
    return prefer


def check_profile(headers: Mapping[str, str], method: str) -> None:
    """PGRST106 (406) unless the `Accept-Profile` / `Content-Profile` asked for is SCHEMA."""
    name = "accept-profile" if method in ("GET", "HEAD") else "content-profile"
    profile = headers.get(name)
    if profile is not None and profile != SCHEMA:
        raise ApiError(406, "PGRST106", f"The schema must be one of the following: {SCHEMA}",
                       hint="suparag's local API serves only schema public")


def _body_error(status: int, message: str, details: str | None) -> ApiError:
    return ApiError(status, "PGRST102", message, details=details)


def check_params(params: list[tuple[str, str]]) -> None:
    """PGRST100 (400) for a NUL in the query string: PostgreSQL text cannot hold one,
    so no filter, order or select with it can be sent (PostgREST refuses it too)."""
    for key, value in params:
        if "\0" in key or "\0" in value:
            raise ApiError(400, "PGRST100", f"query parameter {key!r} contains a NUL "
                           "character (%00)", hint="Remove the NUL: PostgreSQL text "
                           "cannot hold one.")


def check_unsupported(headers: Mapping[str, str], prefer: Mapping[str, str]) -> None:
    """PGRST100 (400) for what docs/local-api.md says is refused rather than ignored: a
    `Range` header (its rows would be wrong) and `Prefer: tx=` (a rollback asked for
    would be committed)."""
    if "range" in headers:
        raise ApiError(400, "PGRST100", "Range headers are not supported by suparag's "
                       "local API", hint="Use limit= and offset= (supabase-py's .range() "
                       "does).")
    if "tx" in prefer:
        raise ApiError(400, "PGRST100", f"Prefer: tx={prefer['tx']} is not supported by "
                       "suparag's local API", hint="Drop the tx preference; each request "
                       "commits, as on a Supabase project.")


async def read_call(request: Request, keys: ProjectKeys, *,
                    max_rows: int = DEFAULT_MAX_ROWS) -> Call:
    """The request as a Call: a 401 without a valid key, a 400 for a body that is not
    JSON or a query string with a NUL, a 413 for a body above MAX_REST_BODY."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    claims = request_claims(headers, keys)
    check_profile(headers, request.method)
    params = list(request.query_params.multi_items())
    check_params(params)
    prefer = parse_prefer(headers.get("prefer", ""))
    check_unsupported(headers, prefer)
    body: Any = None
    if request.method in ("POST", "PATCH"):
        body = await read_json(request, max_bytes=MAX_REST_BODY, error=_body_error)
        if body is None and "table" in request.path_params:
            raise ApiError(400, "PGRST102", "Empty or invalid json")
    return Call(method=request.method, path=request.url.path, headers=headers,
                params=params, claims=claims,
                prefer=prefer, body=body, max_rows=max_rows)
