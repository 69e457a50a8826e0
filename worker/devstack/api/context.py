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
    is not the project's anon or service_role key is a 401 even beside a valid
    Bearer token.
    """
    token = bearer_token(headers)
    apikey = headers.get("apikey")
    if apikey and apikey not in (keys.anon_key, keys.service_role_key):
        # Supabase's gateway checks the apikey header on its own, whatever the Bearer
        # token, and knows only the project's two keys: a wrong key beside a valid
        # token is refused, and so is any other valid project JWT (a user's access
        # token) sent as the key.
        try:
            keys.verify(apikey)
            reason = "it is a project JWT but not the anon or service_role key"
        except InvalidToken as exc:
            reason = str(exc)
        raise ApiError(401, "PGRST301", f"Invalid API key: {reason}",
                       hint="Send the anon key (see `suparag dev status`) as the apikey "
                       "header and a user's token as Authorization: Bearer.",
                       headers={"WWW-Authenticate": "Bearer"})
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
