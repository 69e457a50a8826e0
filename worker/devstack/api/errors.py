"""The API's errors as HTTP responses: PostgREST's and GoTrue's shapes, and PostgREST's
mapping from SQLSTATE to HTTP status.

The exception classes (`ApiError`, `AuthError`) live in `worker.errors`; this module
turns them into responses, as the app's exception handlers.
"""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker.devstack.api.limits import POOL_RETRY_AFTER
from worker.errors import ApiError, AuthError


def api_error_response(exc: ApiError) -> JSONResponse:
    """`{code, details, hint, message}` with the error's status and headers (PostgREST)."""
    body = {"code": exc.code, "details": exc.details, "hint": exc.hint, "message": exc.message}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def auth_error_response(exc: AuthError) -> JSONResponse:
    """`{code, error_code, msg, ...}` with the error's status (GoTrue)."""
    return JSONResponse({"code": exc.status, "error_code": exc.error_code, "msg": exc.msg,
                         **exc.extra}, status_code=exc.status)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    return auth_error_response(exc)


def pool_timeout() -> ApiError:
    """Every pooled connection stayed busy for the whole wait: PostgREST's PGRST003, as a
    503 with `Retry-After` (the request is fine; it can be sent again shortly)."""
    return ApiError(503, "PGRST003", "Timed out acquiring connection from connection pool.",
                    hint=f"The API is busy: retry after {POOL_RETRY_AFTER} s.",
                    headers={"Retry-After": str(POOL_RETRY_AFTER)})


async def _pool_timeout(request: Request, exc: Exception) -> Response:
    # Routes without their own mapping (e.g. /auth/v1) still answer a busy pool this way.
    error = pool_timeout()
    if request.url.path.startswith("/auth/"):
        response = auth_error_response(AuthError(503, "request_timeout", error.message))
        response.headers["Retry-After"] = str(POOL_RETRY_AFTER)
        return response
    return api_error_response(error)


#: For `Starlette(exception_handlers=...)`.
EXCEPTION_HANDLERS = {ApiError: _api_error, AuthError: _auth_error, PoolTimeout: _pool_timeout}


# PostgREST's table (docs: "Errors / HTTP Status Codes"), by exact code then class.
_EXACT = {"23503": 409, "23505": 409, "25006": 405, "P0001": 400, "42883": 404,
          "42P01": 404, "42P17": 500}
_CLASS = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
          "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
          "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}


def status_for(sqlstate: str, *, role: str) -> int:
    """The HTTP status PostgREST gives a database error."""
    if sqlstate == "42501":
        # Insufficient privilege: "not logged in" for anon, "forbidden" otherwise.
        return 401 if role == "anon" else 403
    return _EXACT.get(sqlstate) or _CLASS.get(sqlstate[:2], 400)


def from_database(exc: psycopg.Error, *, role: str) -> ApiError:
    """A database error as PostgREST reports it."""
    diag = exc.diag
    sqlstate = diag.sqlstate or "XX000"
    return ApiError(status_for(sqlstate, role=role), sqlstate,
                    diag.message_primary or str(exc), details=diag.message_detail,
                    hint=diag.message_hint)
