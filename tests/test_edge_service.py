"""The edge functions as `suparag serve` runs them (worker/edge), over real HTTP with the
official supabase-py client: search and embed as the caller, the gateway's checks
(apikey, HS256 secret, JWKS), CORS, caps, the rate limit and /metrics (issue 18)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import READABLE, TEMPLATE, create_database, http_double, make_world, running_app
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb
from supabase import create_client
from supabase_functions.errors import FunctionsHttpError
from test_search_cli import CORPUS, CORPUS_READABLE

from worker.db import connect
from worker.devstack.postgres import free_port
from worker.edge import limits
from worker.edge.app import create_edge_app
from worker.edge.auth import Gateway
from worker.edge.functions import EdgeConfig
from worker.jobs.embedding import EmbeddingWorker
from worker.models.base import Embedder

ROOT = Path(__file__).resolve().parents[1]
SECRET = "edge-test-secret-" + "s" * 32
OTHER_SECRET = "another-projects-secret-" + "o" * 32
# supabase-py's own client construction passes a deprecated argument to the functions client.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The 'timeout' parameter is deprecated:DeprecationWarning")


def sign(claims: dict[str, Any], *, key: Any = SECRET, alg: str = "HS256",
         lifetime: int = 3600, kid: str | None = None) -> str:
    now = int(time.time())
    return jwt.encode({**claims, "iat": now, "exp": now + lifetime}, key, algorithm=alg,
                      headers={"kid": kid} if kid else None)


ANON_KEY = sign({"role": "anon", "iss": "supabase"}, lifetime=10 * 365 * 86400)
SERVICE_KEY = sign({"role": "service_role", "iss": "supabase"}, lifetime=10 * 365 * 86400)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


class Jwks(BaseHTTPRequestHandler):
    """The project's `/auth/v1/.well-known/jwks.json`: the test's public keys."""

    def do_GET(self) -> None:
        keys = [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key())),
                 "kid": "rsa-1", "alg": "RS256", "use": "sig"},
                {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key())),
                 "kid": "ec-1", "alg": "ES256", "use": "sig"}]
        body = json.dumps({"keys": keys}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Service:
    url: str
    db_url: str
    world: Any
    names: dict[str, str]  # document id -> name

    def token(self, user: str, **kwargs: Any) -> str:
        return sign(self.world.users[user].claims(), **kwargs)

    def post(self, function: str, body: Any, *, token: str | None = None,
             apikey: str | None = ANON_KEY, **headers: str) -> httpx.Response:
        sent = dict(headers)
        if apikey is not None:
            sent["apikey"] = apikey
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return httpx.post(f"{self.url}/functions/v1/{function}", json=body, headers=sent,
                          timeout=60)

    def titles(self, response: httpx.Response) -> set[str]:
        assert response.status_code == 200, response.text
        return {hit["title"] for hit in response.json()["results"]}


def config(jwks_url: str | None = None, **kwargs: Any) -> EdgeConfig:
    return EdgeConfig(gateway=Gateway(api_keys=frozenset({ANON_KEY, SERVICE_KEY}),
                                      jwt_secret=SECRET, jwks_url=jwks_url), **kwargs)


@pytest.fixture(scope="module")
def corpus_db(pg_server, template_url, embedder) -> tuple[str, Any, dict[str, str]]:
    url = create_database(pg_server, template=TEMPLATE)
    with connect(url) as conn:
        world = make_world(conn)
        ids = {str(v): k for k, v in world.docs.items()}
        for name, (owner, team, visibility, content, metadata) in CORPUS.items():
            row = conn.execute(
                "insert into public.documents (owner_id, team, visibility, title, content,"
                " metadata) values (%s, %s, %s, %s, %s, %s) returning id",
                (world.users[owner].id, team, visibility, name, content, Jsonb(metadata)),
            ).fetchone()
            assert row is not None
            ids[str(row["id"])] = name
        conn.commit()
    worker = EmbeddingWorker(url, embedder)
    try:
        assert worker.drain().embedded == len(ids)
    finally:
        worker.close()
    return url, world, ids


@pytest.fixture(scope="module")
def service(corpus_db, embedder: Embedder) -> Iterator[Service]:
    url, world, ids = corpus_db
    with http_double(Jwks) as jwks_base, \
            running_app(create_edge_app(url, config(f"{jwks_base}/jwks.json"),
                                        lambda: embedder)) as base:
        yield Service(base, url, world, ids)


def readable(user: str) -> set[str]:
    return READABLE[user] | CORPUS_READABLE[user]


# -- search and embed as the caller ---------------------------------------------------------


def test_two_users_each_search_only_what_they_may_read_through_supabase_py(service):
    client = create_client(service.url, ANON_KEY)
    for user in ("alice", "bob"):
        body = client.functions.invoke("search", {
            "body": {"query": "animals, bread and rocks", "k": 20},
            "headers": {"Authorization": f"Bearer {service.token(user)}"},
            "responseType": "json"})
        got = {hit["title"] for hit in body["results"]}
        assert got == readable(user), user
        assert "similarity" in body["results"][0]
    # Each user's private document reaches only its owner.
    assert "octopus" in readable("alice") and "octopus" not in readable("bob")


def test_anon_reads_public_rows_only_and_service_role_reads_all(service):
    assert service.titles(service.post("search", {"query": "rocks", "k": 20},
                                       token=ANON_KEY)) == readable("anon")
    assert service.titles(service.post("search", {"query": "rocks", "k": 20})) == \
        readable("anon")  # the apikey alone is the anon role, as supabase-js sends it
    everything = service.titles(service.post("search", {"query": "rocks", "k": 20},
                                             token=SERVICE_KEY, apikey=SERVICE_KEY))
    assert everything == set(service.names.values())


def test_hybrid_search_and_a_metadata_filter_run_as_the_caller(service):
    hybrid = service.post("search", {"query": "glaciers valleys", "k": 3, "hybrid": True},
                          token=service.token("bob"))
    assert hybrid.status_code == 200, hybrid.text
    first = hybrid.json()["results"][0]
    assert first["title"] == "glacier" and "score" in first
    filtered = service.post("search", {"query": "anything", "k": 20,
                                       "filter": {"topic": "geology"}},
                            token=service.token("alice"))
    assert service.titles(filtered) == {"volcano", "glacier"}


def test_embed_as_a_user_matches_the_model(service, embedder):
    response = service.post("embed", {"input": "three hearts"}, token=service.token("carol"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == embedder.name
    want = embedder.embed(["three hearts"])[0]
    assert max(abs(a - b) for a, b in zip(body["embedding"], want, strict=True)) < 1e-5
    assert "model;dur=" in response.headers["server-timing"]


# -- the gateway ------------------------------------------------------------------------------


def _refused(response: httpx.Response, code: str = "PGRST301") -> str:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"code", "message", "details", "hint"} and body["code"] == code
    assert response.headers["www-authenticate"].startswith("Bearer")
    return str(body["message"])


def test_bad_tokens_are_refused_with_the_reason(service):
    query = {"query": "octopus"}
    assert "No API key" in _refused(service.post("search", query, apikey=None))
    # Bob's token with its payload swapped for one naming alice: the signature is bob's.
    head, _, signature = service.token("bob").split(".")
    payload = jwt.utils.base64url_encode(json.dumps(
        {**service.world.users["alice"].claims(), "exp": int(time.time()) + 600}).encode())
    forged = f"{head}.{payload.decode()}.{signature}"
    assert "Signature verification failed" in _refused(service.post("search", query,
                                                                      token=forged))
    other = service.token("alice", key=OTHER_SECRET)
    assert "Signature verification failed" in _refused(service.post("search", query,
                                                                     token=other))
    expired = service.token("alice", lifetime=-30)
    assert "expired" in _refused(service.post("search", query, token=expired), "PGRST303")
    # A user's valid token is not an API key.
    assert "not the anon or service_role key" in _refused(
        service.post("search", query, token=service.token("alice"),
                     apikey=service.token("alice")))
    # A token that names no API role.
    assert "not an API role" in _refused(service.post(
        "search", query, token=sign({"role": "postgres", "sub": "x"})))


def test_supabase_py_sees_the_refusal_as_an_http_error(service):
    client = create_client(service.url, ANON_KEY)
    with pytest.raises(FunctionsHttpError):
        client.functions.invoke("search", {"body": {"query": "x"}, "headers": {
            "Authorization": f"Bearer {service.token('alice', lifetime=-30)}"}})


@pytest.mark.parametrize(("key", "alg", "kid"), [(RSA_KEY, "RS256", "rsa-1"),
                                                 (EC_KEY, "ES256", "ec-1")])
def test_asymmetric_tokens_are_verified_against_the_projects_jwks(service, key, alg, kid):
    claims = service.world.users["alice"].claims()
    token = sign(claims, key=key, alg=alg, kid=kid)
    assert service.titles(service.post("search", {"query": "hearts", "k": 20},
                                       token=token)) == readable("alice")
    # The same claims signed by a key the JWKS does not hold.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = sign(claims, key=stranger, alg="RS256", kid="rsa-1")
    assert "Signature verification failed" in _refused(
        service.post("search", {"query": "hearts"}, token=bad))
    unknown_kid = sign(claims, key=key, alg=alg, kid="rotated-away")
    assert "no signing key" in _refused(service.post("search", {"query": "hearts"},
                                                     token=unknown_kid))


def test_wake_needs_no_jwt_but_embed_and_search_do(service):
    assert service.post("wake", None, apikey=None).status_code == 200
    assert service.post("embed", {"input": "x"}, apikey=None).status_code == 401


# -- browsers ---------------------------------------------------------------------------------


def test_cors_preflight_as_a_browser_sends_it(service):
    asked = "authorization, x-client-info, apikey, content-type"
    response = httpx.options(f"{service.url}/functions/v1/search", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": asked})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip().lower() for h in
               response.headers["access-control-allow-headers"].split(",")}
    assert {h.strip() for h in asked.split(",")} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    # The request that follows carries the header the browser needs to read the answer.
    answer = service.post("search", {"query": "rocks"}, Origin="http://localhost:3000")
    assert answer.headers["access-control-allow-origin"] == "*"
    # A header the functions do not take is refused at preflight.
    refused = httpx.options(f"{service.url}/functions/v1/search", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-something-else"})
    assert refused.status_code == 400


# -- limits -----------------------------------------------------------------------------------


def test_oversized_and_malformed_input_is_refused_before_the_model(service, embedder):
    token = service.token("alice")
    big = service.post("search", {"query": "x" * (limits.MAX_QUERY_BYTES + 1)}, token=token)
    assert big.status_code == 413 and str(limits.MAX_QUERY_BYTES) in big.json()["message"]
    long = service.post("search", {"query": "word " * (embedder.max_tokens + 5)}, token=token)
    assert long.status_code == 400 and "tokens" in long.json()["message"]
    huge_body = service.post("embed", {"input": "y" * (limits.MAX_FUNCTIONS_BODY + 1)},
                             token=token)
    assert huge_body.status_code == 413
    for body in ({"query": ""}, {"query": "x", "k": 0}, {"query": "x", "k": 10_000},
                 {"query": "x", "filter": [1]}, {"query": "x", "hybrid": "yes"},
                 {"query": "x", "limit": 5}, ["query"]):
        response = service.post("search", body, token=token)
        assert response.status_code == 400, body
        assert "query" in response.json()["hint"]
    unknown = service.post("search", {"query": "x", "space": "no-such-space"}, token=token)
    assert unknown.status_code == 404


def test_the_rate_limit_is_per_user_with_retry_after(corpus_db, embedder):
    url, world, ids = corpus_db
    app = create_edge_app(url, config(rate_limit=3, rate_window=60.0), lambda: embedder)
    with running_app(app) as base:
        service = Service(base, url, world, ids)
        alice, bob = service.token("alice"), service.token("bob")
        statuses = [service.post("search", {"query": "hearts"}, token=alice).status_code
                    for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = service.post("embed", {"input": "x"}, token=alice)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["code"] == "rate_limited"
        # Another user, and the project's own servers, are not held back by alice.
        assert service.post("search", {"query": "hearts"}, token=bob).status_code == 200
        assert service.post("search", {"query": "hearts"}, token=SERVICE_KEY,
                            apikey=SERVICE_KEY).status_code == 200


# -- metrics and the cache ------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def test_metrics_count_what_was_served_and_the_cache_hits(corpus_db, embedder):
    url, world, ids = corpus_db
    with running_app(create_edge_app(url, config(), lambda: embedder)) as base:
        service = Service(base, url, world, ids)
        token = service.token("alice")
        first = service.post("search", {"query": "a question asked twice"}, token=token)
        second = service.post("search", {"query": "a question asked twice"}, token=token)
        assert first.json()["results"] == second.json()["results"]
        assert service.post("search", {"query": "x"}, apikey=None).status_code == 401
        assert service.post("embed", {"input": "a question asked twice"},
                            token=token).status_code == 200
        with connect(url) as conn:
            queued = conn.execute("select count(*) as n from suparag_private.embedding_jobs"
                                  " where status <> 'failed'").fetchone()
        seen = scrape(base)
    model = (("model", embedder.name),)
    assert seen[("suparag_edge_requests_total", (("function", "search"), ("status", "200")))] \
        == 2
    assert seen[("suparag_edge_requests_total", (("function", "search"), ("status", "401")))] \
        == 1
    assert seen[("suparag_edge_requests_total", (("function", "embed"), ("status", "200")))] \
        == 1
    assert seen[("suparag_edge_request_seconds_count", (("function", "search"),))] == 3
    assert seen[("suparag_edge_model_seconds_count", (("function", "search"),))] == 2
    # One miss, then the same text twice from the cache (search, then embed).
    assert seen[("suparag_edge_query_cache_misses_total", model)] == 1
    assert seen[("suparag_edge_query_cache_hits_total", model)] == 2
    assert seen[("suparag_queue_depth", (("queue", "embeddings"),))] == (queued or {})["n"]
    assert ("suparag_queue_depth", (("queue", "answers"),)) in seen


def test_a_search_is_bounded_by_the_callers_role_statement_timeout(service):
    """As PostgREST does, the role's own `statement_timeout` applies to a search made for
    it: a search stuck behind a lock ends at authenticated's limit, not never."""
    with connect(service.db_url) as conn:
        database = conn.execute("select current_database() as d").fetchone()["d"]
        conn.execute(f'alter role authenticated in database "{database}"'
                     " set statement_timeout = '1s'")
        conn.commit()
        try:
            conn.execute("lock table public.documents in access exclusive mode")
            stuck = service.post("search", {"query": "raft"}, token=service.token("alice"))
            conn.rollback()
            assert stuck.status_code == 503, stuck.text
            assert stuck.json()["code"] == "57014"
            assert "statement timeout" in stuck.json()["message"]
            # With the lock gone the same search answers; the setting did not outlive
            # the request that applied it.
            assert service.titles(service.post("search", {"query": "raft"},
                                               token=service.token("alice")))
        finally:
            conn.rollback()
            conn.execute(f'alter role authenticated in database "{database}"'
                         " reset statement_timeout")
            conn.commit()


def test_health_says_whether_the_database_answers(service):
    response = httpx.get(f"{service.url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


# -- `suparag serve` ------------------------------------------------------------------------


def test_suparag_serve_is_configured_by_the_environment_alone(corpus_db, tmp_path):
    url, world, _ = corpus_db
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPARAG_", "SUPABASE_"))}
    missing = subprocess.run([sys.executable, "-m", "cli", "serve"], cwd=tmp_path,
                             env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 1
    assert "SUPARAG_DB_URL" in missing.stderr and "SUPABASE_ANON_KEY" in missing.stderr
    env.update(PYTHONPATH=str(ROOT), SUPARAG_DB_URL=url, SUPABASE_ANON_KEY=ANON_KEY,
               SUPABASE_JWT_SECRET=SECRET, PORT=str(port), SUPARAG_SERVE_HOST="127.0.0.1")
    process = subprocess.Popen([sys.executable, "-m", "cli", "serve"], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "suparag serve did not start"
            time.sleep(0.2)
        service = Service(f"http://127.0.0.1:{port}", url, world, {})
        assert service.titles(service.post("search", {"query": "bread", "k": 20},
                                           token=service.token("bob"))) == readable("bob")
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- the dev API mounts the same functions ------------------------------------------------


def test_the_dev_api_serves_the_same_search_with_its_own_keys(corpus_db, embedder, tmp_path):
    from worker.devstack.api.app import create_app
    from worker.devstack.api.functions import functions_routes
    from worker.devstack.api.keys import load_or_create

    url, world, _ = corpus_db
    keys = load_or_create(tmp_path / "home")
    app = create_app(url, keys, routes=functions_routes(keys, lambda: embedder))
    with running_app(app) as base:
        client = create_client(base, keys.anon_key)
        for user in ("alice", "bob"):
            body = client.functions.invoke("search", {
                "body": {"query": "animals, bread and rocks", "k": 20},
                "headers": {"Authorization": f"Bearer {keys.access_token(world.users[user])}"},
                "responseType": "json"})
            assert {hit["title"] for hit in body["results"]} == readable(user), user
        # The production service's secret means nothing to the dev API, and vice versa.
        refused = httpx.post(f"{base}/functions/v1/search", json={"query": "x"}, headers={
            "apikey": keys.anon_key, "Authorization": f"Bearer {sign({'role': 'anon'})}"})
        assert refused.status_code == 401
        assert httpx.get(f"{base}/metrics").status_code == 200
