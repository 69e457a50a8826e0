"""Who is calling: the verified JWT of a request, as PostgREST and Supabase's gateway read it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.devstack.api.keys import ProjectKeys
from worker.errors import ApiError, InvalidToken

_CHALLENGE = 'Bearer error="invalid_token", error_description="{}"'


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer ...`, else the `apikey` header, else None."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("apikey") or None


def request_claims(headers: Mapping[str, str], keys: ProjectKeys) -> dict[str, Any]:
    """The verified claims of the request, or a PostgREST-shaped 401.

    Supabase's gateway refuses a request without a key, so a missing token is
    a 401 here too rather than PostgREST's bare anon; and an `apikey` header that
    is not a valid project key is a 401 even beside a valid Bearer token.
    """
    token = bearer_token(headers)
    apikey = headers.get("apikey")
    if apikey and apikey != token:
        # Supabase's gateway checks the apikey header on its own, whatever the Bearer
        # token: a wrong key beside a valid token is still refused.
        try:
            keys.verify(apikey)
        except InvalidToken as exc:
            raise ApiError(401, "PGRST301", f"Invalid API key: {exc}",
                           hint="Send the anon key (see `suparag dev status`) as the apikey "
                           "header.", headers={"WWW-Authenticate": "Bearer"}) from exc
    if token is None:
        raise ApiError(401, "PGRST301", "No API key found in request",
                       hint="Send the anon key (see `suparag dev status`) as the apikey "
                       "header or as Authorization: Bearer.",
                       headers={"WWW-Authenticate": "Bearer"})
    try:
        return keys.verify(token)
    except InvalidToken as exc:
        code = "PGRST303" if exc.expired else "PGRST301"
        raise ApiError(401, code, str(exc),
                       headers={"WWW-Authenticate": _CHALLENGE.format(exc)}) from exc
