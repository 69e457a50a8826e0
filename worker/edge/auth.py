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
from dataclasses import dataclass, field
from typing import Any

import jwt

from worker.errors import ApiError, InvalidToken

API_ROLES = frozenset({"anon", "authenticated", "service_role"})
_ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA")
_CHALLENGE = 'Bearer error="invalid_token", error_description="{}"'
_KEY_HINT = ("Send the project's anon key as the apikey header and the signed-in "
             "user's access token as Authorization: Bearer.")


def jwks_url_for(supabase_url: str) -> str:
    """Where a Supabase project publishes its signing keys."""
    return supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer ...`, else the `apikey` header, else None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("apikey") or None


@dataclass
class Gateway:
    """The project's keys and how to verify its tokens."""

    #: The project's API keys (anon, service_role) accepted in the `apikey` header.
    api_keys: frozenset[str]
    jwt_secret: str | None = None
    jwks_url: str | None = None
    _jwks: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.jwt_secret and not self.jwks_url:
            raise ValueError("the gateway needs the JWT secret or a JWKS URL")

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid project token, or InvalidToken saying what is wrong."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid JWT: {exc}") from exc
        key: Any
        if alg == "HS256" and self.jwt_secret:
            key = self.jwt_secret
        elif alg in _ASYMMETRIC and self.jwks_url:
            key = self._signing_key(token)
        else:
            raise InvalidToken(f"invalid JWT: algorithm {alg!r} is not accepted here: use "
                               "an access token this project issued")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], options={"verify_aud": False, "require": ["exp"]})
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("JWT expired: refresh the session for a fresh access token",
                               expired=True) from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid JWT: {exc}") from exc
        if claims.get("role") not in API_ROLES:
            raise InvalidToken(f"JWT role {claims.get('role')!r} is not an API role")
        return claims

    def _signing_key(self, token: str) -> Any:
        if self._jwks is None:
            # Keys cached for 10 minutes; an unknown kid refetches (a rotated key).
            self._jwks = jwt.PyJWKClient(self.jwks_url or "", cache_keys=True, lifespan=600,
                                         timeout=5)
        try:
            return self._jwks.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as exc:
            raise InvalidToken(f"invalid JWT: no signing key for it at {self.jwks_url}: "
                               f"{exc}") from exc

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
