"""`/auth/v1` through supabase-py's auth client, and the tokens it hands out."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import psutil
import pytest
from conftest import free_port, port_taken
from supabase import ClientOptions, create_client
from supabase_auth.errors import AuthApiError, AuthWeakPasswordError
from test_api_rest import PASSWORD, Api, serve
from test_cli import Cli, DbCli

from worker.devstack.api.auth import check_password, hash_password
from worker.devstack.api.keys import keys_path, load_or_create
from worker.users import add_user, find_user


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from serve(db_url, tmp_path / "home")


def test_sign_up_sign_in_user_and_sign_out(api, conn):
    client = api.client()
    signed_up = client.auth.sign_up({"email": "Rita@Example.com", "password": PASSWORD,
                                     "options": {"data": {"name": "Rita"}}})
    assert signed_up.user.email == "rita@example.com"
    assert signed_up.user.user_metadata == {"name": "Rita"}
    assert signed_up.session is not None  # confirmed at once, like `supabase start`
    row = conn.execute("select encrypted_password from auth.users where email = %s",
                       ("rita@example.com",)).fetchone()
    assert row["encrypted_password"].startswith("scrypt$")
    assert PASSWORD not in row["encrypted_password"]

    # The operator puts her in a team; the next sign-in's token carries it.
    add_user(conn, "rita@example.com", team="red")
    conn.commit()
    session = client.auth.sign_in_with_password(
        {"email": "rita@example.com", "password": PASSWORD}).session
    claims = api.keys.verify(session.access_token)
    rita = find_user(conn, "rita@example.com")
    assert claims["sub"] == str(rita.id) and claims["role"] == "authenticated"
    assert claims["email"] == "rita@example.com" and claims["aud"] == "authenticated"
    assert claims["app_metadata"]["team"] == "red"
    assert claims["user_metadata"] == {"name": "Rita"}
    assert claims["exp"] - claims["iat"] == session.expires_in == 3600

    user = client.auth.get_user().user
    assert user.id == str(rita.id) and user.app_metadata["team"] == "red"

    # A refresh continues the session with a new pair of tokens.
    refreshed = client.auth.refresh_session().session
    again = api.keys.verify(refreshed.access_token)
    assert again["sub"] == str(rita.id) and again["session_id"] == claims["session_id"]
    assert refreshed.refresh_token != session.refresh_token

    client.auth.sign_out()
    assert client.auth.get_session() is None
    after = refresh(api, refreshed.refresh_token)
    assert after.status_code == 400
    assert after.json()["error_code"] == "refresh_token_not_found"
    # Refresh tokens are kept as digests only.
    kept = conn.execute("select count(*) as n from auth.refresh_tokens where token = %s"
                        " or token = %s", (session.refresh_token, refreshed.refresh_token)
                        ).fetchone()
    assert kept["n"] == 0


def refresh(api: Api, token: str) -> httpx.Response:
    return httpx.post(f"{api.url}/auth/v1/token", params={"grant_type": "refresh_token"},
                      json={"refresh_token": token}, headers={"apikey": api.keys.anon_key})


def test_a_refresh_token_spent_twice_ends_its_session(api, conn):
    client = api.client()
    first = client.auth.sign_up({"email": "sam@example.com", "password": PASSWORD}).session
    second = refresh(api, first.refresh_token)
    assert second.status_code == 200, second.text
    reuse = refresh(api, first.refresh_token)
    assert reuse.status_code == 400
    assert reuse.json()["error_code"] == "refresh_token_already_used"
    # Either holder of the spent token may be a thief: the session's latest token is dead too.
    assert refresh(api, second.json()["refresh_token"]).json()["error_code"] == \
        "refresh_token_already_used"


def test_sessions_survive_an_api_restart_and_sign_out_scopes(db_url, tmp_path, conn):
    home = tmp_path / "home"
    sessions = {}
    for api in serve(db_url, home):
        client = api.client()
        client.auth.sign_up({"email": "lee@example.com", "password": PASSWORD})
        for device in ("laptop", "phone", "tablet"):
            sessions[device] = client.auth.sign_in_with_password(
                {"email": "lee@example.com", "password": PASSWORD}).session
    # A new API process (same database, same keys): the sessions are still there.
    for api in serve(db_url, home):
        phone = refresh(api, sessions["phone"].refresh_token)
        assert phone.status_code == 200, phone.text
        sessions["phone"] = phone.json()
        # Signing out the laptop's session alone leaves the others.
        out = httpx.post(f"{api.url}/auth/v1/logout", params={"scope": "local"},
                         headers={"apikey": api.keys.anon_key,
                                  "Authorization": f"Bearer {sessions['laptop'].access_token}"})
        assert out.status_code == 204
        assert refresh(api, sessions["laptop"].refresh_token).status_code == 400
        tablet = refresh(api, sessions["tablet"].refresh_token)
        assert tablet.status_code == 200
        # scope=others from the phone ends the tablet, keeps the phone.
        out = httpx.post(f"{api.url}/auth/v1/logout", params={"scope": "others"},
                         headers={"apikey": api.keys.anon_key,
                                  "Authorization": f"Bearer {sessions['phone']['access_token']}"})
        assert out.status_code == 204
        assert refresh(api, tablet.json()["refresh_token"]).status_code == 400
        assert refresh(api, sessions["phone"]["refresh_token"]).status_code == 200


def test_wrong_password_duplicate_and_weak_password(api, conn):
    client = api.client()
    client.auth.sign_up({"email": "ben@example.com", "password": PASSWORD})
    with pytest.raises(AuthApiError) as caught:
        client.auth.sign_in_with_password({"email": "ben@example.com", "password": "wrong!"})
    assert caught.value.status == 400 and caught.value.code == "invalid_credentials"
    with pytest.raises(AuthApiError) as caught:
        client.auth.sign_in_with_password({"email": "nobody@example.com",
                                           "password": PASSWORD})
    assert caught.value.code == "invalid_credentials"
    with pytest.raises(AuthApiError) as caught:
        api.client().auth.sign_up({"email": "ben@example.com", "password": "another one"})
    assert caught.value.status == 422 and caught.value.code == "user_already_exists"
    with pytest.raises(AuthWeakPasswordError) as weak:
        api.client().auth.sign_up({"email": "short@example.com", "password": "123"})
    assert weak.value.status == 422 and weak.value.reasons == ["length"]
    # The original password still works: the duplicate sign-up changed nothing.
    assert client.auth.sign_in_with_password(
        {"email": "ben@example.com", "password": PASSWORD}).session is not None


def test_sign_up_cannot_take_over_an_operator_created_user(api, conn):
    """`suparag users add` makes a row without a password; a sign-up with its email (by
    anyone holding the public anon key) must not set one and sign in as that user."""
    victim = add_user(conn, "v@x.example", team="red")
    conn.commit()
    with pytest.raises(AuthApiError) as caught:
        api.client().auth.sign_up({"email": "V@x.example", "password": "attacker's"})
    assert caught.value.status == 422 and caught.value.code == "user_already_exists"
    raw = httpx.post(f"{api.url}/auth/v1/signup",
                     json={"email": "v@x.example", "password": "attacker's"},
                     headers={"apikey": api.keys.anon_key})
    assert raw.status_code == 422
    assert raw.json() == {"code": 422, "error_code": "user_already_exists",
                          "msg": "User already registered"}
    assert "access_token" not in raw.text
    row = conn.execute("select encrypted_password, raw_app_meta_data from auth.users"
                       " where id = %s", (victim.id,)).fetchone()
    assert row["encrypted_password"] is None
    assert row["raw_app_meta_data"]["team"] == "red"
    with pytest.raises(AuthApiError):
        api.client().auth.sign_in_with_password({"email": "v@x.example",
                                                 "password": "attacker's"})


def test_the_operator_gives_a_created_user_a_password(api, conn, tmp_path):
    """The way in for users that exist before they sign up (the demo's, say):
    `suparag users add EMAIL --password P`, then the official client signs in."""
    cli = DbCli(tmp_path, api.db_url)
    short = cli("users", "add", "v@x.example", "--password", "abc", check=False)
    assert short.returncode == 1 and "at least 6 characters" in short.stderr
    assert "Traceback" not in short.stderr
    cli("users", "add", "v@x.example", "--team", "red", "--password", PASSWORD)
    session = api.client().auth.sign_in_with_password(
        {"email": "v@x.example", "password": PASSWORD}).session
    assert session is not None
    claims = jwt.decode(session.access_token, options={"verify_signature": False})
    assert claims["app_metadata"]["team"] == "red"
    with pytest.raises(AuthApiError):
        api.client().auth.sign_in_with_password({"email": "v@x.example", "password": "wrong1"})


def test_user_endpoint_refuses_bad_tokens(api, conn):
    user = add_user(conn, "rita@example.com")
    conn.commit()
    headers = {"apikey": api.keys.anon_key}
    missing = httpx.get(f"{api.url}/auth/v1/user", headers=headers)
    assert missing.status_code == 401
    expired = api.keys.access_token(user, lifetime=-10)
    response = httpx.get(f"{api.url}/auth/v1/user",
                         headers={**headers, "Authorization": f"Bearer {expired}"})
    assert response.status_code == 403 and response.json()["error_code"] == "bad_jwt"
    # The anon key is a valid JWT but names no user.
    response = httpx.get(f"{api.url}/auth/v1/user",
                         headers={**headers, "Authorization": f"Bearer {api.keys.anon_key}"})
    assert response.status_code == 403
    # No project key at all: refused before anything else.
    response = httpx.post(f"{api.url}/auth/v1/signup",
                          json={"email": "x@example.com", "password": PASSWORD})
    assert response.status_code == 401


def test_keys_are_generated_once_and_private(tmp_path):
    home = tmp_path / "home"
    first = load_or_create(home)
    assert stat.S_IMODE(os.stat(keys_path(home)).st_mode) == 0o600
    assert load_or_create(home) == first
    assert first.verify(first.anon_key)["role"] == "anon"
    assert first.verify(first.service_role_key)["role"] == "service_role"
    assert load_or_create(tmp_path / "other").jwt_secret != first.jwt_secret


def test_password_hashes():
    stored = hash_password("s3cret!")
    assert check_password("s3cret!", stored)
    assert not check_password("s3cret", stored)
    assert hash_password("s3cret!") != stored  # salted
    assert not check_password("s3cret!", None)


@pytest.fixture
def dev_cli(tmp_path):
    """The real `suparag` binary with its own home, DB port and API port."""
    work = tmp_path / "project"
    work.mkdir()
    runner = Cli(home=tmp_path / "home", port=free_port(), cwd=work)
    api_port = str(free_port())
    yield runner, {"SUPARAG_API_PORT": api_port}
    runner("dev", "stop", check=False, env={"SUPARAG_API_PORT": api_port})


def test_dev_serves_the_api_in_the_background(dev_cli):
    cli, env = dev_cli
    started = json.loads(cli("dev", "--json", env=env).stdout)
    url = f"http://127.0.0.1:{env['SUPARAG_API_PORT']}"
    assert started["api_url"] == url and started["api_reused"] is False
    status = json.loads(cli("dev", "status", "--json", env=env).stdout)
    assert status["api_running"] and status["api_url"] == url
    assert status["api_log"].endswith("api.log") and status["log"].endswith("postgres.log")
    anon, service = status["anon_key"], status["service_role_key"]
    secret = status["jwt_secret"]
    assert jwt.decode(anon, secret, algorithms=["HS256"])["role"] == "anon"
    assert jwt.decode(service, secret, algorithms=["HS256"])["role"] == "service_role"
    keys_file = cli.home / "keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600

    # The official client works against it, and a token from `suparag token` too.
    # Ann signs up; then the operator puts her in a team, which her next sign-in carries.
    client = create_client(url, anon)
    client.auth.sign_up({"email": "ann@example.com", "password": PASSWORD})
    cli("users", "add", "ann@example.com", "--team", "red")
    client.auth.sign_in_with_password({"email": "ann@example.com", "password": PASSWORD})
    inserted = client.table("documents").insert(
        {"title": "hello", "content": "world", "visibility": "team", "team": "red"}).execute()
    assert inserted.data[0]["team"] == "red"
    token = cli("token", "ann@example.com", env=env).stdout.strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="authenticated")
    assert claims["email"] == "ann@example.com" and claims["app_metadata"]["team"] == "red"
    as_ann = create_client(url, anon, options=ClientOptions(
        auto_refresh_token=False, headers={"Authorization": f"Bearer {token}"}))
    assert [r["title"] for r in as_ann.table("documents").select("title").execute().data] \
        == ["hello"]
    assert create_client(url, anon).table("documents").select("title").execute().data == []
    missing = cli("token", "nobody@example.com", env=env, check=False)
    assert missing.returncode == 1 and "suparag users add" in missing.stderr

    # Running it again reuses both; `dev stop` stops both.
    again = json.loads(cli("dev", "--json", env=env).stdout)
    assert again["api_reused"] is True and again["api_pid"] == started["api_pid"]
    assert "Stopped the local API" in cli("dev", "stop", env=env).stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/auth/v1/health", timeout=2)
    assert not psutil.pid_exists(started["api_pid"]) or \
        psutil.Process(started["api_pid"]).status() == psutil.STATUS_ZOMBIE
    # Keys survive a restart: the same secret signs the new process's tokens.
    restarted = json.loads(cli("dev", "--json", env=env).stdout)
    assert restarted["jwt_secret"] == secret and restarted["api_reused"] is False


def test_api_port_taken_is_a_clear_error(dev_cli):
    cli, env = dev_cli
    with port_taken(int(env["SUPARAG_API_PORT"])):
        result = cli("dev", env=env, check=False)
    assert result.returncode == 1
    assert "taken by another program" in result.stderr and "SUPARAG_API_PORT" in result.stderr


def test_api_port_defaults_to_one_below_the_db_port(tmp_path):
    """Supabase's pair (API 54321, DB 54322), kept when SUPARAG_DB_PORT moves."""
    work = tmp_path / "project"
    work.mkdir()
    cli = Cli(home=tmp_path / "home", port=free_port(), cwd=work)
    try:
        started = json.loads(cli("dev", "--json").stdout)
        assert started["api_url"] == f"http://127.0.0.1:{cli.port - 1}"
        health = httpx.get(f"{started['api_url']}/auth/v1/health", timeout=5)
        assert health.status_code == 200
    finally:
        cli("dev", "stop", check=False)
