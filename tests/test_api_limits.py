"""Issue 14 (hardening): requests the local API must refuse with a 4xx naming the limit,
never a crash, a 5xx or a wrong answer; over real HTTP against a real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_app
from test_api_rest import PASSWORD, Api, serve

from worker.devstack.api import limits
from worker.devstack.api.app import create_app
from worker.devstack.api.functions import functions_routes
from worker.devstack.api.keys import load_or_create
from worker.models.base import Embedder

DEEP = b"[" * 5000 + b"]" * 5000


def _no_model() -> Embedder:
    raise AssertionError("the model must not load for a refused request")


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    """The API with its functions routes (whose model must never be needed here)."""
    keys = load_or_create(tmp_path / "home")
    app = create_app(db_url, keys, routes=functions_routes(keys, _no_model))
    with running_app(app) as url:
        yield Api(url=url, keys=keys, db_url=db_url)


def send(api: Api, method: str, path: str, *, content: bytes | None = None,
         key: str | None = None, **headers: str) -> httpx.Response:
    key = key or api.keys.anon_key
    return httpx.request(method, f"{api.url}{path}", content=content, timeout=30,
                         headers={"apikey": api.apikey(key), "Authorization": f"Bearer {key}",
                                  "Content-Type": "application/json", **headers})


def test_limit_and_offset_take_ascii_digits_only(api, world):
    for name in ("limit", "offset"):
        for value in ("²", "١٢"):  # str.isdigit() is true for both; int() fails on ²
            response = api.get("/rest/v1/documents", **{name: value})
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "PGRST100" and name in response.json()["message"]
    response = api.post("/rest/v1/rpc/match_documents?limit=²",
                        {"query_embedding": [0.5] * 384, "match_count": 3})
    assert response.status_code == 400 and response.json()["code"] == "PGRST100"


@pytest.mark.parametrize("path", ["/rest/v1/documents", "/rest/v1/rpc/match_documents",
                                  "/auth/v1/signup", "/functions/v1/embed"])
def test_deeply_nested_json_is_400_naming_the_limit(api, path):
    response = send(api, "POST", path, content=DEEP)
    assert response.status_code == 400, response.text
    text = response.json().get("message") or response.json().get("msg")
    assert f"{limits.MAX_JSON_DEPTH} levels" in text
    # Brackets inside strings are text, not nesting.
    assert not limits.too_deep(b'{"a": "' + b"[" * 500 + b'"}')
    assert limits.too_deep(b"[" * 65 + b"]" * 65) and not limits.too_deep(b"[" * 64 + b"]" * 64)


def test_json_at_the_depth_limit_is_read(api, conn):
    nested: Any = "leaf"
    for _ in range(limits.MAX_JSON_DEPTH - 1):
        nested = {"k": nested}
    signed_up = api.client().auth.sign_up({"email": "deep@example.com", "password": PASSWORD,
                                           "options": {"data": nested}})
    assert signed_up.session is not None


@pytest.mark.parametrize(("path", "limit"), [
    ("/rest/v1/documents", limits.MAX_REST_BODY),
    ("/auth/v1/signup", limits.MAX_AUTH_BODY),
    ("/functions/v1/embed", limits.MAX_FUNCTIONS_BODY),
])
def test_bodies_above_the_size_limit_are_413(api, path, limit):
    body = b'{"input": "' + b"x" * limit + b'"}'
    response = send(api, "POST", path, content=body)
    assert response.status_code == 413, response.text
    text = response.json().get("message") or response.json().get("msg")
    assert str(limit) in text
    # Without a Content-Length (chunked), the limit holds as the body streams in.
    chunked = httpx.post(f"{api.url}{path}", content=iter([body[:limit], body[limit:]]),
                         headers={"apikey": api.keys.anon_key,
                                  "Content-Type": "application/json"})
    assert chunked.status_code == 413


@pytest.mark.parametrize(("email", "on_sign_in"), [
    ("a" * 290 + "@example.com", "validation_failed"),
    ("v\x00@example.com", "validation_failed"), ("v@exa\x00mple.com", "validation_failed"),
    # Malformed but storable: sign-in (which does not check the format, as GoTrue) finds
    # no such user.
    ("a@", "invalid_credentials"), ("@example.com", "invalid_credentials"),
    ("not-an-email", "invalid_credentials")])
def test_bad_emails_are_validation_errors(api, conn, email, on_sign_in):
    for path, code in (("/auth/v1/signup", "validation_failed"),
                       ("/auth/v1/token?grant_type=password", on_sign_in)):
        response = httpx.post(f"{api.url}{path}", json={"email": email, "password": PASSWORD},
                              headers={"apikey": api.keys.anon_key})
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error_code"] == code
    assert conn.execute("select count(*) as n from auth.users").fetchone()["n"] == 0


def test_a_nul_in_user_data_is_a_validation_error(api, conn):
    response = httpx.post(f"{api.url}/auth/v1/signup",
                          json={"email": "n@example.com", "password": PASSWORD,
                                "data": {"name": "a\x00b"}},
                          headers={"apikey": api.keys.anon_key})
    assert response.status_code == 400 and response.json()["error_code"] == "validation_failed"


@pytest.mark.parametrize("params", [{"title": "eq.a\x00b"}, {"order": "title\x00"},
                                    {"select": "title\x00"}, {"or": "(title.eq.a\x00)"}])
def test_a_nul_in_the_query_string_is_400(api, world, params):
    response = api.get("/rest/v1/documents", token=api.keys.service_role_key, **params)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "PGRST100" and "NUL" in response.json()["message"]


def test_an_update_or_delete_without_a_filter_is_refused(api, conn, world):
    """pg-safeupdate, as Supabase loads it for API requests: not every row the caller
    owns, by a forgotten `.eq()`; with a filter that matches them all it is allowed."""
    alice = api.keys.access_token(world.users["alice"])
    for method, body in (("PATCH", b'{"title": "oops"}'), ("DELETE", None)):
        response = send(api, method, "/rest/v1/documents", content=body, key=alice)
        assert response.status_code == 400, response.text
        verb = "UPDATE" if method == "PATCH" else "DELETE"
        assert response.json()["code"] == "21000"
        assert response.json()["message"] == f"{verb} requires a WHERE clause"
    owned = conn.execute("select title from public.documents where owner_id = %s"
                         " order by title", (world.users["alice"].id,)).fetchall()
    assert [r["title"] for r in owned] == ["alice_private", "alice_public", "alice_team"]
    everything = send(api, "PATCH", "/rest/v1/documents?id=not.is.null", key=alice,
                      content=b'{"title": "renamed"}', Prefer="return=representation")
    assert everything.status_code == 200 and len(everything.json()) == 3


@pytest.mark.parametrize("method", ["DELETE", "PATCH"])
@pytest.mark.parametrize("prefer", ["return=representation", "return=minimal"])
def test_single_object_mutation_of_two_rows_changes_nothing(api, conn, world, method, prefer):
    service = api.keys.service_role_key
    body = b'{"title": "changed"}' if method == "PATCH" else None
    response = send(api, method, "/rest/v1/documents?team=eq.a", content=body, key=service,
                    Accept="application/vnd.pgrst.object+json", Prefer=prefer)
    assert response.status_code == 406, response.text
    assert response.json()["code"] == "PGRST116"
    assert "2 rows" in response.json()["details"]
    rows = conn.execute("select title from public.documents where team = 'a'"
                        " order by title").fetchall()
    assert [r["title"] for r in rows] == ["alice_private", "alice_team"]
    # Exactly one row: done, and answered as one object.
    one = send(api, method, f"/rest/v1/documents?id=eq.{world.docs['bob_team']}",
               content=body, key=service, Accept="application/vnd.pgrst.object+json",
               Prefer="return=representation")
    assert one.status_code == 200 and isinstance(one.json(), dict)


def test_reads_are_capped_at_max_rows_from_the_project_config(db_url, tmp_path, world,
                                                              monkeypatch):
    project = tmp_path / "project"
    (project / "supabase").mkdir(parents=True)
    (project / "supabase" / "config.toml").write_text("[api]\nmax_rows = 2\n")
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")  # found above the working directory, as the CLI does
    for api in serve(db_url, tmp_path / "home"):
        service = api.keys.service_role_key
        response = api.get("/rest/v1/documents", token=service, limit="5000")
        assert response.status_code == 200 and len(response.json()) == 2
        assert len(api.get("/rest/v1/documents", token=service).json()) == 2
        assert len(api.get("/rest/v1/documents", token=service, limit="1").json()) == 1
        counted = httpx.get(f"{api.url}/rest/v1/documents",
                            headers={"apikey": service, "Prefer": "count=exact"})
        assert counted.headers["content-range"] == f"0-1/{len(world.docs)}"
        matched = api.post("/rest/v1/rpc/match_documents",
                           {"query_embedding": [0.5] * 384, "match_count": 5}, token=service)
        assert matched.status_code == 200 and len(matched.json()) == 2
        # The client reads the same cap.
        rows = api.client(service).table("documents").select("id").limit(5000).execute()
        assert len(rows.data) == 2


def test_max_rows_is_read_from_config_toml(tmp_path):
    assert limits.max_rows(tmp_path) == limits.DEFAULT_MAX_ROWS  # no project
    (tmp_path / "supabase").mkdir()
    config = tmp_path / "supabase" / "config.toml"
    config.write_text("[api]\nmax_rows = 7\n")
    assert limits.max_rows(tmp_path) == 7
    config.write_text("[api]\nport = 1\n")
    assert limits.max_rows(tmp_path) == limits.DEFAULT_MAX_ROWS
    # This repository's own config, as `supabase init` writes it.
    assert limits.max_rows(Path(__file__).parent.parent) == 1000


def test_an_invalid_apikey_beside_a_valid_bearer_is_401(api, world):
    alice = api.keys.access_token(world.users["alice"])
    for path in ("/rest/v1/documents", "/auth/v1/user"):
        response = httpx.get(f"{api.url}{path}", headers={
            "apikey": "not-a-key", "Authorization": f"Bearer {alice}"})
        assert response.status_code == 401, (path, response.text)
        ok = httpx.get(f"{api.url}{path}", headers={
            "apikey": api.keys.anon_key, "Authorization": f"Bearer {alice}"})
        assert ok.status_code == 200, (path, ok.text)
    response = httpx.post(f"{api.url}/functions/v1/embed", json={"input": "x"}, headers={
        "apikey": "not-a-key", "Authorization": f"Bearer {alice}"})
    assert response.status_code == 401


def test_range_headers_and_tx_preferences_are_refused_as_documented(api, conn, world):
    """docs/local-api.md lists both as refused: a rollback asked for must not commit."""
    service = api.keys.service_role_key
    ranged = send(api, "GET", "/rest/v1/documents", key=service, Range="0-1")
    assert ranged.status_code == 400 and "limit=" in ranged.json()["hint"]
    rollback = send(api, "DELETE", "/rest/v1/documents?team=eq.a", key=service,
                    Prefer="tx=rollback")
    assert rollback.status_code == 400 and "tx=rollback" in rollback.json()["message"]
    assert conn.execute("select count(*) as n from public.documents where team = 'a'"
                        ).fetchone()["n"] == 2
    # supabase-py's .range() is limit and offset, and still works.
    rows = api.client(service).table("documents").select("id").range(0, 1).execute()
    assert len(rows.data) == 2


def test_sign_ins_are_rate_limited_per_address(api, conn):
    """30 sign-ups and password sign-ins per 5 minutes from one address, as Supabase
    Auth's default: a password cannot be guessed at the speed of a loop."""
    headers = {"apikey": api.keys.anon_key}
    signed_up = httpx.post(f"{api.url}/auth/v1/signup", headers=headers,
                           json={"email": "guess@example.com", "password": PASSWORD})
    assert signed_up.status_code == 200
    token = f"{api.url}/auth/v1/token?grant_type=password"
    for attempt in range(limits.SIGN_IN_LIMIT - 1):
        wrong = httpx.post(token, headers=headers,
                           json={"email": "guess@example.com", "password": f"guess {attempt}"})
        assert wrong.status_code == 400, wrong.text
    right = httpx.post(token, headers=headers,
                       json={"email": "guess@example.com", "password": PASSWORD})
    assert right.status_code == 429, right.text
    assert right.json()["error_code"] == "over_request_rate_limit"
    assert "access_token" not in right.text
    # A session already held is not affected: refreshing is another budget.
    refreshed = httpx.post(f"{api.url}/auth/v1/token?grant_type=refresh_token",
                           headers=headers,
                           json={"refresh_token": signed_up.json()["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text


def test_the_rate_limit_window_slides():
    now = [0.0]
    limit = limits.RateLimit(2, 10.0, clock=lambda: now[0])
    assert limit.allow("a") and limit.allow("a") and not limit.allow("a")
    assert limit.allow("b")  # per key
    now[0] = 9.0
    assert not limit.allow("a")
    now[0] = 10.5  # the first two events have left the window
    assert limit.allow("a") and limit.allow("a") and not limit.allow("a")
