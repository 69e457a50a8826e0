"""Verifying a Supabase project's access tokens: one verifier for every server of ours
that takes a user's JWT (the edge functions' gateway, the MCP server).

A token is accepted when it is signed by the project, not expired (`exp` is
required) and carries one of the API roles. HS256 tokens are checked with the
project's JWT secret (Supabase's legacy and local signing); asymmetric ones
(RS/ES/EdDSA, Supabase's signing keys) against the project's JWKS
(`<SUPABASE_URL>/auth/v1/.well-known/jwks.json`), fetched by PyJWT's
PyJWKClient and cached for 10 minutes (an unknown `kid` refetches, so a rotated
key is picked up). What each server does with the claims (which roles it
serves) is its own business: subclasses add those checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jwt

from worker.errors import InvalidToken

API_ROLES = frozenset({"anon", "authenticated", "service_role"})
_ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA")
JWKS_CACHE_SECONDS = 600


def jwks_url_for(supabase_url: str) -> str:
    """Where a Supabase project publishes its signing keys."""
    return supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"


@dataclass
class TokenVerifier:
    """Checks tokens with the project's JWT secret and/or its JWKS."""

    jwt_secret: str | None = None
    jwks_url: str | None = None
    _jwks: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.jwt_secret and not self.jwks_url:
            raise ValueError("verifying tokens needs the project's JWT secret or a JWKS URL")

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid project token, or InvalidToken saying what is wrong."""
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid JWT: {exc}: use an access token this project "
                               "issued") from exc
        key: Any
        if alg == "HS256":
            if not self.jwt_secret:
                raise InvalidToken("invalid JWT: HS256 tokens are not accepted here (no JWT "
                                   "secret is set): use a token from the project's signing "
                                   "keys")
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
            raise InvalidToken("JWT expired: sign in again (or refresh the session) for a "
                               "fresh access token", expired=True) from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid JWT: {exc}: use an access token this project "
                               "issued") from exc
        if claims.get("role") not in API_ROLES:
            raise InvalidToken(f"JWT role {claims.get('role')!r} is not an API role "
                               f"({', '.join(sorted(API_ROLES))})")
        return claims

    def _signing_key(self, token: str) -> Any:
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(self.jwks_url or "", cache_keys=True,
                                         lifespan=JWKS_CACHE_SECONDS, timeout=5)
        try:
            return self._jwks.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as exc:
            raise InvalidToken(f"invalid JWT: no signing key for it at {self.jwks_url}: "
                               f"{exc}") from exc
