"""Issue 14 (hardening), the local API as strict as Supabase: the gateway's apikey rule,
sign-in timing that does not tell who has an account, the roles' statement timeouts
and a pool that answers 503 instead of queuing; over real HTTP against a real database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_api_rest import PASSWORD, Api, serve

from worker.users import add_user


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from serve(db_url, tmp_path / "home")


def sign_in(api: Api, email: str, password: str) -> httpx.Response:
    return httpx.post(f"{api.url}/auth/v1/token", params={"grant_type": "password"},
                      json={"email": email, "password": password},
                      headers={"apikey": api.keys.anon_key}, timeout=30)


def test_a_user_token_as_apikey_is_refused_as_the_gateway_refuses_it(api, world):
    alice = api.keys.access_token(world.users["alice"])
    for path in ("/rest/v1/documents", "/rest/v1/"):
        # The anon key as apikey and the user's token as Bearer: what the clients send.
        ok = httpx.get(f"{api.url}{path}", headers={
            "apikey": api.keys.anon_key, "Authorization": f"Bearer {alice}"})
        assert ok.status_code == 200, ok.text
        # A valid project JWT that is not one of the project's two keys, as apikey.
        for headers in ({"apikey": alice}, {"apikey": alice, "Authorization": f"Bearer {alice}"}):
            response = httpx.get(f"{api.url}{path}", headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "PGRST301"
            assert "Invalid API key" in response.json()["message"]
    # The service_role key is a project key.
    service = api.keys.service_role_key
    assert httpx.get(f"{api.url}/rest/v1/documents", headers={
        "apikey": service, "Authorization": f"Bearer {service}"}).status_code == 200
    # /auth/v1 holds the same rule.
    assert httpx.get(f"{api.url}/auth/v1/user", headers={
        "apikey": alice, "Authorization": f"Bearer {alice}"}).status_code == 401
    assert httpx.get(f"{api.url}/auth/v1/user", headers={
        "apikey": api.keys.anon_key, "Authorization": f"Bearer {alice}"}).status_code == 200


def test_sign_in_does_the_same_hash_work_for_known_and_unknown_emails(api, conn, monkeypatch):
    api.client().auth.sign_up({"email": "known@example.com", "password": PASSWORD})
    add_user(conn, "nopassword@example.com", team="red")  # operator-made, no password
    conn.commit()
    costs: list[dict[str, Any]] = []
    scrypt = hashlib.scrypt

    def counted(password: bytes, **params: Any) -> bytes:
        costs.append({k: params[k] for k in ("n", "r", "p")})
        return scrypt(password, **params)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    per_email = {}
    for email in ("known@example.com", "unknown@example.com", "nopassword@example.com"):
        costs.clear()
        response = sign_in(api, email, "wrong password")
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "invalid_credentials"
        per_email[email] = list(costs)
    # One scrypt of the same cost each: the time does not tell which emails exist.
    assert per_email["known@example.com"] == [{"n": 2**14, "r": 8, "p": 1}]
    assert per_email["unknown@example.com"] == per_email["known@example.com"]
    assert per_email["nopassword@example.com"] == per_email["known@example.com"]
    costs.clear()
    assert sign_in(api, "known@example.com", PASSWORD).status_code == 200
    assert len(costs) == 1
