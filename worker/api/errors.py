"""API errors in PostgREST's shape, and its mapping from SQLSTATE to HTTP status."""

from __future__ import annotations

from typing import Any

import psycopg
from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error the API answers with `{code, message, details, hint}` and a status."""

    def __init__(self, status: int, code: str, message: str, *, details: str | None = None,
                 hint: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint, self.headers = details, hint, headers

    def response(self) -> JSONResponse:
        body = {"code": self.code, "details": self.details, "hint": self.hint,
                "message": self.message}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


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


def json_error(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)
