"""Issue 14 (hardening), the local API as strict as Supabase: the gateway's apikey rule,
sign-in timing that does not tell who has an account, the roles' statement timeouts
and a pool that answers 503 instead of queuing; over real HTTP against a real database."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import running_app, wait_for
from test_api_rest import PASSWORD, Api, serve

from worker.devstack.api.app import create_app
from worker.devstack.api.functions import functions_routes
from worker.devstack.api.keys import load_or_create
from worker.jobs.queue import QUEUES
from worker.jobs.wakeups import WakeServer, Wakeups
from worker.models.base import Embedder
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


SLEEPER = """
create function public.test_sleep(seconds double precision) returns integer
language sql volatile set search_path = '' as $$
  select 1 from (select pg_catalog.pg_sleep(seconds)) s
$$;
grant execute on function public.test_sleep(double precision) to anon, authenticated;
"""


@pytest.fixture
def sleeper(conn):
    """An rpc that sleeps, callable as anon and authenticated (made for the test only)."""
    conn.execute(SLEEPER)
    conn.commit()


def sleeping(conn) -> int:
    """How many of the API's requests are inside pg_sleep right now."""
    n = conn.execute("select count(*) as n from pg_stat_activity where datname ="
                     " current_database() and query like '%%test_sleep%%'"
                     " and wait_event = 'PgSleep'").fetchone()["n"]
    conn.commit()  # pg_stat_activity is read once per transaction
    return int(n)


def rpc_sleep(api: Api, seconds: float, *, token: str | None = None) -> httpx.Response:
    token = token or api.keys.anon_key
    return httpx.post(f"{api.url}/rest/v1/rpc/test_sleep", json={"seconds": seconds},
                      headers={"apikey": api.keys.anon_key,
                               "Authorization": f"Bearer {token}"}, timeout=60)


def test_the_role_statement_timeouts_apply_per_request(api, conn, world, sleeper):
    # anon's 3 s from the Supabase roles (sql/supabase_standin.sql), which `set local
    # role` alone never applies: PostgREST applies the role's settings per request.
    response = rpc_sleep(api, 20)
    assert response.status_code == 500, response.text
    assert response.json()["code"] == "57014"
    assert "statement timeout" in response.json()["message"]
    # authenticated's own setting, made shorter for this database only (a database's
    # setting for the role wins over the role's, as PostgreSQL applies them).
    database = conn.execute("select current_database() as d").fetchone()["d"]
    conn.execute(f'alter role authenticated in database "{database}"'
                 " set statement_timeout = '1s'")
    conn.commit()
    alice = api.keys.access_token(world.users["alice"])
    response = rpc_sleep(api, 20, token=alice)
    assert response.status_code == 500 and response.json()["code"] == "57014", response.text
    # Under the limit (with room for a slow machine), the call works; the setting does not
    # outlive the request.
    assert rpc_sleep(api, 0.05, token=alice).json() == 1
    assert api.get("/rest/v1/documents", token=alice, select="id").status_code == 200


def test_slow_requests_cannot_starve_fast_ones(api, conn, world, sleeper):
    # The slow requests outlast the checks below by seconds even on a slow machine: anon's
    # limit is 6 s in this database (3 s from the Supabase roles elsewhere).
    database = conn.execute("select current_database() as d").fetchone()["d"]
    conn.execute(f'alter role anon in database "{database}" set statement_timeout = \'6s\'')
    conn.commit()
    slow: list[httpx.Response] = []

    def call_slow() -> None:
        slow.append(rpc_sleep(api, 20))

    threads = [threading.Thread(target=call_slow) for _ in range(8)]
    for thread in threads:
        thread.start()
    # Every pooled connection is busy in a slow request (each bounded by anon's 6 s).
    assert wait_for(lambda: sleeping(conn) == 8, timeout=20), sleeping(conn)
    with ThreadPoolExecutor(3) as pool:
        fast = list(pool.map(lambda _: api.get("/rest/v1/documents", select="id"), range(3)))
    # The fast requests were answered while the slow ones still ran: they did not wait
    # them out. Each is an answer or a 503 that says when to come back.
    assert slow == [] and sleeping(conn) == 8
    for response in fast:
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert response.json()["code"] == "PGRST003"
            assert int(response.headers["Retry-After"]) >= 1
    assert any(r.status_code == 503 for r in fast)  # the pool was full
    for thread in threads:
        thread.join()
    assert [r.json()["code"] for r in slow] == ["57014"] * 8
    # With the slow ones gone, the pool serves again.
    assert api.get("/rest/v1/documents", select="id").status_code == 200


def _no_model() -> Embedder:
    raise AssertionError("a wake-up needs no model")


def test_the_api_wake_endpoint_needs_the_vault_secret_once_it_exists(db_url, conn, tmp_path):
    keys = load_or_create(tmp_path / "home")
    app = create_app(db_url, keys, routes=functions_routes(keys, _no_model))
    with running_app(app) as url, psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen suparag_embedding_jobs")

        def wake(**headers: str) -> int:
            return httpx.post(f"{url}/functions/v1/wake", json={"type": "INSERT"},
                              headers=headers, timeout=10).status_code

        def woken(timeout: float = 0.5) -> int:  # a wake-up expected: 5 s, ends at the first
            return sum(1 for _ in listener.notifies(timeout=timeout, stop_after=1))

        assert wake() == 200 and woken(5) == 1  # no secret in the Vault: none needed
        conn.execute("select vault.create_secret('s3cret', 'suparag_wake_secret')")
        conn.commit()
        assert wake() == 401 and woken() == 0
        assert wake(**{"X-Suparag-Wake-Secret": "wrong"}) == 401 and woken() == 0
        assert wake(**{"X-Suparag-Wake-Secret": "s3cret"}) == 200 and woken(5) == 1


def test_the_worker_wake_endpoint_refuses_wake_ups_without_its_secret():
    wakeups = Wakeups(QUEUES)
    server = WakeServer(("127.0.0.1", 0), wakeups, lambda: {"ready": True}, secret="s3cret")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        assert httpx.post(url, timeout=5).status_code == 401
        assert httpx.post(url, headers={"X-Suparag-Wake-Secret": "nope"}, timeout=5
                          ).status_code == 401
        assert wakeups.counts["http"] == 0
        assert httpx.post(url, headers={"X-Suparag-Wake-Secret": "s3cret"}, timeout=5
                          ).status_code == 202
        assert wakeups.counts["http"] == 1
        assert httpx.get(f"{url}health", timeout=5).json() == {"ready": True}
    finally:
        server.shutdown()
        server.server_close()
