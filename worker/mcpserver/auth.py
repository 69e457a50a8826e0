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

from typing import Any

from worker.errors import InvalidToken
from worker.tokens import TokenVerifier as ProjectTokenVerifier
from worker.tokens import jwks_url_for

__all__ = ["USER_ROLE", "TokenVerifier", "jwks_url_for"]

#: The only role a token may carry here.
USER_ROLE = "authenticated"


class TokenVerifier(ProjectTokenVerifier):
    """A project token (worker/tokens.py) that is also a signed-in user's."""

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid user token, or InvalidToken saying what is wrong."""
        claims = super().verify(token)
        role = claims.get("role")
        if role != USER_ROLE:
            raise InvalidToken(
                f"JWT role {role!r} is refused: the MCP server answers only as a signed-in "
                "user, so pass that user's access token (not the anon or service_role key)")
        if not claims.get("sub"):
            raise InvalidToken("JWT has no \"sub\" (user id): pass a signed-in user's "
                               "access token")
        return claims
