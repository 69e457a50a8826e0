"""Issue 14 (hardening), the local API as strict as Supabase: the gateway's apikey rule,
sign-in timing that does not tell who has an account, the roles' statement timeouts
and a pool that answers 503 instead of queuing; over real HTTP against a real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api_rest import Api, serve


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
