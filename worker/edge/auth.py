"""Who is calling an edge function, checked as Supabase's gateway checks it.

- `apikey`: when sent, it must be one of the project's API keys (anon or
  service_role), whatever the Bearer token says; a user's own token is not a key.
- `Authorization: Bearer <jwt>` (else the apikey itself, as supabase-js sends
  the anon key when no one is signed in): verified with the project's JWT secret
  (HS256) or, for asymmetric tokens (RS256/ES256/EdDSA, Supabase's signing keys),
  against its JWKS (`<SUPABASE_URL>/auth/v1/.well-known/jwks.json`), fetched by
  PyJWT's PyJWKClient and cached. It must carry an API role and an `exp`.
- `verify_jwt` per function (Supabase's `[functions.<name>] verify_jwt`): a
  function without it runs without a token, as anon; a token that is sent is
  still verified, because its claims become the database role (never trusted
  unverified).

Errors are PostgREST-shaped 401s (`PGRST301`, `PGRST303` for an expired token)
with a `WWW-Authenticate` challenge, as the dev API's `/rest/v1` answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import ApiError, InvalidToken
from worker.tokens import API_ROLES, TokenVerifier, jwks_url_for

__all__ = ["API_ROLES", "Gateway", "bearer_token", "jwks_url_for"]

_CHALLENGE = 'Bearer error="invalid_token", error_description="{}"'
_KEY_HINT = ("Send the project's anon key as the apikey header and the signed-in "
             "user's access token as Authorization: Bearer.")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer ...`, else the `apikey` header, else None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("apikey") or None


@dataclass(kw_only=True)
class Gateway(TokenVerifier):
    """The project's keys and how to verify its tokens (worker/tokens.py)."""

    #: The project's API keys (anon, service_role) accepted in the `apikey` header.
    api_keys: frozenset[str]

    def claims(self, headers: Mapping[str, str], *, verify_jwt: bool = True
               ) -> dict[str, Any] | None:
        """The verified claims of a request (headers lower-cased), None for an anonymous
        call to a function without verify_jwt, or a 401 ApiError."""
        apikey = headers.get("apikey")
        if apikey and apikey not in self.api_keys:
            try:
                self.verify(apikey)
                reason = "it is a project JWT but not the anon or service_role key"
            except InvalidToken as exc:
                reason = str(exc)
            raise ApiError(401, "PGRST301", f"Invalid API key: {reason}", hint=_KEY_HINT,
                           headers={"WWW-Authenticate": "Bearer"})
        token = bearer_token(headers)
        if token is None:
            if not verify_jwt:
                return None
            raise ApiError(401, "PGRST301", "No API key found in request", hint=_KEY_HINT,
                           headers={"WWW-Authenticate": "Bearer"})
        try:
            return self.verify(token)
        except InvalidToken as exc:
            raise ApiError(401, "PGRST303" if exc.expired else "PGRST301", str(exc),
                           hint=_KEY_HINT,
                           headers={"WWW-Authenticate": _CHALLENGE.format(exc)}) from exc
