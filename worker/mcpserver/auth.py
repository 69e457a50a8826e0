"""Who an MCP request runs as: a user's Supabase access token, verified, as JWT claims.

The claims go to `as_request` unchanged, as PostgREST would set them, so the
database's RLS decides what the caller reads. Only a signed-in user's token is
accepted (`role` = `authenticated`, a `sub`, not expired): an anon key would
make every call anonymous, and a service_role key would bypass RLS, which is
exactly what this server exists not to do (issue 15).

Tokens are verified with the project's JWT secret (HS256, Supabase's legacy
and local signing), or, for asymmetric tokens (RS256/ES256, Supabase's newer
signing keys), against the project's JWKS
(`<SUPABASE_URL>/auth/v1/.well-known/jwks.json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jwt

from worker.errors import InvalidToken

#: The only role a token may carry here.
USER_ROLE = "authenticated"
_ASYMMETRIC = ("RS256", "ES256", "EdDSA")


def jwks_url_for(supabase_url: str) -> str:
    """Where a Supabase project publishes its signing keys."""
    return supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json"


@dataclass
class TokenVerifier:
    """Verifies Supabase access tokens with the project's secret and/or JWKS."""

    jwt_secret: str | None = None
    jwks_url: str | None = None
    _jwks: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.jwt_secret and not self.jwks_url:
            raise ValueError("a TokenVerifier needs the JWT secret or a JWKS URL")

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid user token, or InvalidToken saying what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid JWT: {exc}: sign in again for a fresh access token") \
                from exc
        alg = header.get("alg")
        key: Any
        if alg == "HS256":
            if not self.jwt_secret:
                raise InvalidToken("HS256 tokens are not accepted here (no JWT secret set): "
                                   "use a token from the project's signing keys")
            key = self.jwt_secret
        elif alg in _ASYMMETRIC and self.jwks_url:
            key = self._signing_key(token)
        else:
            raise InvalidToken(f"JWT algorithm {alg!r} is not accepted: use a Supabase "
                               "access token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg],
                options={"verify_aud": False, "require": ["exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("JWT expired: sign in again (or refresh the session) for a "
                               "fresh access token", expired=True) from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid JWT: {exc}: use an access token this project "
                               "issued") from exc
        role = claims.get("role")
        if role != USER_ROLE:
            raise InvalidToken(
                f"JWT role {role!r} is refused: the MCP server answers only as a signed-in "
                "user, so pass that user's access token (not the anon or service_role key)")
        if not claims.get("sub"):
            raise InvalidToken("JWT has no \"sub\" (user id): pass a signed-in user's "
                               "access token")
        return claims

    def _signing_key(self, token: str) -> Any:
        if self._jwks is None:
            self._jwks = jwt.PyJWKClient(self.jwks_url or "", cache_keys=True, lifespan=600)
        try:
            return self._jwks.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as exc:
            raise InvalidToken(f"no signing key for this JWT at {self.jwks_url}: {exc}") \
                from exc
