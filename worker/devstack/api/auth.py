"""`/auth/v1`: enough of Supabase Auth (GoTrue) for local development.

Sign up and sign in with email and password, refresh, `GET /user`, sign out.
Users are rows of `auth.users`; passwords are stored as scrypt hashes in
`encrypted_password`. Sign-ups are confirmed at once, as with `supabase start`'s
default (`enable_confirmations = false`). Refresh tokens live in this process
only: restarting the API signs every session out (access tokens stay valid
until they expire, as upstream). Errors use GoTrue's shape `{code, error_code, msg}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.devstack.api.context import bearer_token, request_claims
from worker.devstack.api.keys import ACCESS_TOKEN_LIFETIME, ProjectKeys
from worker.devstack.api.limits import (
    MAX_AUTH_BODY,
    MAX_EMAIL_LENGTH,
    SIGN_IN_LIMIT,
    SIGN_IN_WINDOW_SECONDS,
)
from worker.edge.limits import RateLimit, read_json
from worker.errors import AuthError, InvalidToken
from worker.users import User

MIN_PASSWORD = 6
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """An scrypt hash with its parameters and salt, for auth.users.encrypted_password."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt${n}${r}${p}${salt}${digest}".format(
        **_SCRYPT, salt=base64.b64encode(salt).decode(), digest=base64.b64encode(digest).decode())


#: Verified against when there is no usable hash (an unknown email, a user made by
#: `suparag users add` without a password), so that a sign-in costs the same hash work
#: whether or not the email exists: its time does not tell who has an account.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def check_password(password: str, stored: str | None) -> bool:
    """Whether password matches a hash from hash_password; always one scrypt of the
    default cost, also when stored is missing or not such a hash (then False)."""
    usable = stored is not None and stored.startswith("scrypt$") and stored.count("$") == 5
    _, n, r, p, salt, digest = (stored if usable and stored else _DUMMY_HASH).split("$")
    actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                            r=int(r), p=int(p))
    return usable and hmac.compare_digest(actual, base64.b64decode(digest))


#: GoTrue's email check (badoux/checkmail's format): local part, @, a domain.
_EMAIL = re.compile(r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}"
                    r"[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*")


def _email(value: Any, *, check_format: bool = True) -> str:
    """value as an email address, or GoTrue's 400 `validation_failed` saying what is wrong.
    Sign-in skips the format (an unknown address is `invalid_credentials`) but not what
    PostgreSQL cannot look up (a NUL) or GoTrue's length limit."""
    if not isinstance(value, str) or not value:
        raise AuthError(400, "validation_failed", "An email address is required")
    if len(value) > MAX_EMAIL_LENGTH:
        raise AuthError(400, "validation_failed",
                        f"An email address is too long (at most {MAX_EMAIL_LENGTH} characters)")
    if "\0" in value or (check_format and not _EMAIL.fullmatch(value)):
        raise AuthError(400, "validation_failed",
                        "Unable to validate email address: invalid format")
    return value


_USER_COLUMNS = """id, aud, role, email, encrypted_password, email_confirmed_at, last_sign_in_at,
  raw_app_meta_data, raw_user_meta_data, is_anonymous, created_at, updated_at"""


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def user_json(row: dict[str, Any]) -> dict[str, Any]:
    """A user as GoTrue returns it (what supabase-py's `User` model parses)."""
    return {
        "id": str(row["id"]), "aud": row["aud"] or "authenticated",
        "role": row["role"] or "authenticated", "email": row["email"], "phone": "",
        "email_confirmed_at": _iso(row["email_confirmed_at"]),
        "confirmed_at": _iso(row["email_confirmed_at"]),
        "last_sign_in_at": _iso(row["last_sign_in_at"]),
        "app_metadata": row["raw_app_meta_data"] or {},
        "user_metadata": row["raw_user_meta_data"] or {},
        "identities": [], "is_anonymous": bool(row["is_anonymous"]),
        "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
    }


def _as_user(row: dict[str, Any]) -> User:
    return User(id=row["id"], email=row["email"], app_metadata=row["raw_app_meta_data"] or {},
                user_metadata=row["raw_user_meta_data"] or {})


class AuthApi:
    """The `/auth/v1` routes."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], keys: ProjectKeys) -> None:
        self.pool, self.keys = pool, keys
        self._sign_ins = RateLimit(SIGN_IN_LIMIT, SIGN_IN_WINDOW_SECONDS)

    def _count_sign_in(self, request: Request) -> None:
        """Sign-ups and password sign-ins share one budget per client address (GoTrue's)."""
        address = request.client.host if request.client else "unknown"
        if not self._sign_ins.allow(address):
            raise AuthError(429, "over_request_rate_limit",
                            f"Request rate limit reached: at most {SIGN_IN_LIMIT} sign-ups "
                            f"and sign-ins per {SIGN_IN_WINDOW_SECONDS / 60:.0f} minutes "
                            "from one address. Try again later.")

    def routes(self) -> list[Route]:
        return [
            Route("/auth/v1/health", self.health, methods=["GET"]),
            Route("/auth/v1/signup", self.signup, methods=["POST"]),
            Route("/auth/v1/token", self.token, methods=["POST"]),
            Route("/auth/v1/user", self.user, methods=["GET"]),
            Route("/auth/v1/logout", self.logout, methods=["POST"]),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"name": "GoTrue", "version": "suparag-local",
                             "description": "suparag's local stand-in for Supabase Auth"})

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        body = await read_json(request, max_bytes=MAX_AUTH_BODY, error=_body_error)
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise AuthError(400, "bad_json", "Request body must be a JSON object")
        return body

    def _require_apikey(self, request: Request) -> None:
        """Like Supabase's gateway: no valid project key, no entry."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = headers.get("apikey")
        request_claims({"apikey": key} if key else headers, self.keys)

    # -- endpoints --------------------------------------------------------------

    async def signup(self, request: Request) -> Response:
        self._require_apikey(request)
        self._count_sign_in(request)
        body = await self._body(request)
        email, password = _email(body.get("email")), body.get("password")
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise AuthError(422, "weak_password",
                            f"Password should be at least {MIN_PASSWORD} characters.",
                            weak_password={"reasons": ["length"]})
        data: dict[str, Any] = body["data"] if isinstance(body.get("data"), dict) else {}
        row = await run_in_threadpool(self._create_user, email, password, data)
        return JSONResponse(await run_in_threadpool(self._session, request, row))

    async def token(self, request: Request) -> Response:
        self._require_apikey(request)
        body = await self._body(request)
        grant = request.query_params.get("grant_type")
        if grant == "password":
            self._count_sign_in(request)
            row = await run_in_threadpool(self._password_grant, body)
        elif grant == "refresh_token":
            row, session_id, parent = await run_in_threadpool(self._refresh_grant, body)
            return JSONResponse(await run_in_threadpool(self._session, request, row,
                                                        session_id, parent))
        else:
            raise AuthError(400, "unsupported_grant_type",
                            "grant_type must be password or refresh_token here")
        return JSONResponse(await run_in_threadpool(self._session, request, row))

    async def user(self, request: Request) -> Response:
        self._require_apikey(request)
        claims = self._user_claims(request)
        row = await run_in_threadpool(self._fetch, claims["sub"])
        if row is None:
            raise AuthError(403, "user_not_found", "User from sub claim in JWT does not exist")
        return JSONResponse(user_json(row))

    async def logout(self, request: Request) -> Response:
        self._require_apikey(request)
        claims = self._user_claims(request)
        scope = request.query_params.get("scope", "global")
        if scope not in ("global", "local", "others"):
            raise AuthError(400, "validation_failed", "scope must be global, local or others")
        await run_in_threadpool(self._end_sessions, claims["sub"], claims.get("session_id"),
                                scope)
        return Response(status_code=204)

    # -- helpers ----------------------------------------------------------------

    def _user_claims(self, request: Request) -> dict[str, Any]:
        token = bearer_token({k.lower(): v for k, v in request.headers.items()
                              if k.lower() == "authorization"})
        if token is None:
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        try:
            claims = self.keys.verify(token)
        except InvalidToken as exc:
            raise AuthError(403, "bad_jwt", f"invalid JWT: unable to parse or verify "
                            f"signature, {exc}") from exc
        if not claims.get("sub"):
            raise AuthError(403, "bad_jwt", "invalid claim: missing sub claim")
        return claims

    def _session(self, request: Request, row: dict[str, Any],
                 session_id: str | None = None, parent: str | None = None) -> dict[str, Any]:
        """A new access and refresh token pair: for a new session, or (with
        session_id) the next pair of one being refreshed."""
        session_id = session_id or str(uuid.uuid4())
        refresh = secrets.token_urlsafe(24)
        with self.pool.connection() as conn:
            conn.execute(
                "insert into auth.refresh_tokens (token, user_id, session_id, parent)"
                " values (%s, %s, %s, %s)",
                (_digest(refresh), str(row["id"]), session_id, parent))
        issuer = str(request.base_url).rstrip("/") + "/auth/v1"
        access = self.keys.access_token(_as_user(row), session_id=session_id, issuer=issuer)
        return {"access_token": access, "token_type": "bearer",
                "expires_in": ACCESS_TOKEN_LIFETIME,
                "expires_at": int(time.time()) + ACCESS_TOKEN_LIFETIME,
                "refresh_token": refresh, "user": user_json(row)}

    def _fetch(self, user_id: str) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            row: dict[str, Any] | None = conn.execute(
                f"select {_USER_COLUMNS} from auth.users where id = %s::uuid", (user_id,)
            ).fetchone()
            return row

    def _create_user(self, email: str, password: str, data: dict[str, Any]) -> dict[str, Any]:
        app_metadata = {"provider": "email", "providers": ["email"]}
        with self.pool.connection() as conn, _invalid_data():
            # Any existing email is refused, as GoTrue does: an account an operator made
            # with `suparag users add` has no password, and letting a sign-up set one
            # would hand that account (and its team) to whoever asked first.
            row: dict[str, Any] | None = conn.execute(
                f"""
                insert into auth.users (email, encrypted_password, raw_app_meta_data,
                                        raw_user_meta_data, email_confirmed_at, last_sign_in_at)
                values (lower(%(email)s), %(hash)s, %(app)s, %(data)s, now(), now())
                on conflict (email) do nothing
                returning {_USER_COLUMNS}
                """,
                {"email": email, "hash": hash_password(password), "app": Jsonb(app_metadata),
                 "data": Jsonb(data)},
            ).fetchone()
        if row is None:
            raise AuthError(422, "user_already_exists", "User already registered")
        return row

    def _password_grant(self, body: dict[str, Any]) -> dict[str, Any]:
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str):
            raise AuthError(400, "validation_failed", "email and password are required")
        email = _email(email, check_format=False)
        with self.pool.connection() as conn:
            row: dict[str, Any] | None = conn.execute(
                f"select {_USER_COLUMNS} from auth.users where email = lower(%s)", (email,)
            ).fetchone()
            # check_password does the same hash work when row is None (issue 14: a
            # sign-in took 37 ms for a known email and 3 ms for an unknown one).
            stored = None if row is None else row["encrypted_password"]
            if not check_password(password, stored) or row is None:
                raise AuthError(400, "invalid_credentials", "Invalid login credentials")
            conn.execute("update auth.users set last_sign_in_at = now() where id = %s",
                         (row["id"],))
        return row

    def _refresh_grant(self, body: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
        """Spend a refresh token: (user row, its session id, its digest as the parent).

        A token spent twice ends its whole session: one of the two holders is
        not its owner.
        """
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise AuthError(400, "validation_failed", "refresh_token is required")
        digest = _digest(token)
        with self.pool.connection() as conn:
            found = conn.execute(
                "select user_id, session_id, revoked from auth.refresh_tokens where token = %s"
                " for update", (digest,)).fetchone()
            if found is None:
                raise AuthError(400, "refresh_token_not_found",
                                "Invalid Refresh Token: Refresh Token Not Found")
            if found["revoked"]:
                conn.execute("update auth.refresh_tokens set revoked = true, updated_at = now()"
                             " where session_id = %s", (found["session_id"],))
                conn.commit()
                raise AuthError(400, "refresh_token_already_used",
                                "Invalid Refresh Token: Already Used")
            conn.execute("update auth.refresh_tokens set revoked = true, updated_at = now()"
                         " where token = %s", (digest,))
        row = self._fetch(found["user_id"])
        if row is None:
            raise AuthError(400, "user_not_found", "User not found")
        return row, str(found["session_id"]), digest

    def _end_sessions(self, user_id: str, session_id: str | None, scope: str) -> None:
        """Sign out: every session of the user (global), this one (local) or the others."""
        where = {"global": "", "local": " and session_id = %s", "others":
                 " and session_id is distinct from %s"}[scope]
        params: tuple[Any, ...] = (user_id,) if scope == "global" else (user_id, session_id)
        with self.pool.connection() as conn:
            conn.execute("delete from auth.refresh_tokens where user_id = %s" + where, params)


@contextmanager
def _invalid_data() -> Iterator[None]:
    """A value PostgreSQL cannot store (a NUL in `data`) as GoTrue's 400, not a crash."""
    try:
        yield
    except psycopg.DataError as exc:
        raise AuthError(400, "validation_failed", "Invalid user data: "
                        f"{exc.diag.message_primary or exc}") from exc


def _body_error(status: int, message: str, details: str | None) -> AuthError:
    return AuthError(status, "bad_json" if status == 400 else "request_too_large", message)


def _digest(refresh_token: str) -> str:
    """What auth.refresh_tokens keeps of a refresh token: a leaked table signs no one in."""
    return hashlib.sha256(refresh_token.encode()).hexdigest()
