"""The local project's JWT secret and API keys, and signing/verifying tokens.

Like `supabase start`: one HS256 secret per project, an anon key and a
service_role key that are JWTs with a `role` claim. The secret is generated
once and kept in SUPARAG_HOME/keys.json (mode 0600).

PyJWT (with cryptography, a tenth of a second to import) is imported where a
token is signed or verified: `suparag search` only reads the anon key (issue 16).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import InvalidToken
from worker.users import User

ALGORITHM = "HS256"
KEY_LIFETIME = 10 * 365 * 24 * 3600
ACCESS_TOKEN_LIFETIME = 3600
API_ROLES = frozenset({"anon", "authenticated", "service_role"})


@dataclass(frozen=True)
class ProjectKeys:
    """The JWT secret and the two API keys signed with it."""

    jwt_secret: str
    anon_key: str
    service_role_key: str

    def sign(self, claims: dict[str, Any]) -> str:
        """A token for claims, signed with the project secret."""
        import jwt

        return jwt.encode(claims, self.jwt_secret, algorithm=ALGORITHM)

    def access_token(self, user: User, *, lifetime: int = ACCESS_TOKEN_LIFETIME,
                     session_id: str | None = None, issuer: str = "suparag") -> str:
        """An access token with the claims Supabase Auth issues for user."""
        now = int(time.time())
        claims = {**user.claims(), "iss": issuer, "iat": now, "exp": now + lifetime,
                  "aal": "aal1", "amr": [{"method": "password", "timestamp": now}]}
        if session_id is not None:
            claims["session_id"] = session_id
        return self.sign(claims)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid token, or InvalidToken saying what is wrong."""
        import jwt

        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.jwt_secret, algorithms=[ALGORITHM],
                options={"verify_aud": False, "require": ["exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("JWT expired", expired=True) from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid JWT: {exc}") from exc
        if claims.get("role") not in API_ROLES:
            raise InvalidToken(f"JWT role {claims.get('role')!r} is not an API role")
        return claims


def generate() -> ProjectKeys:
    """A fresh secret and the anon and service_role keys signed with it."""
    import jwt

    secret = secrets.token_urlsafe(48)
    now = int(time.time())

    def key(role: str) -> str:
        claims = {"iss": "suparag", "role": role, "iat": now, "exp": now + KEY_LIFETIME}
        return jwt.encode(claims, secret, algorithm=ALGORITHM)

    return ProjectKeys(jwt_secret=secret, anon_key=key("anon"),
                       service_role_key=key("service_role"))


def keys_path(home: Path) -> Path:
    return home / "keys.json"


def load_or_create(home: Path) -> ProjectKeys:
    """This project's keys, generated (and saved, owner-only) on first use."""
    path = keys_path(home)
    if path.exists():
        return ProjectKeys(**json.loads(path.read_text()))
    keys = generate()
    home.mkdir(parents=True, exist_ok=True)
    # Created 0600 from the start, so the secret is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"jwt_secret": keys.jwt_secret, "anon_key": keys.anon_key,
                   "service_role_key": keys.service_role_key}, out, indent=2)
    return keys
