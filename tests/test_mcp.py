"""`suparag mcp`: the SDK's own client over streamable HTTP and stdio, answered as the user.

One database per module (the world and test_search_cli's corpus, embedded by the
real model), one HTTP server in a thread (the real app under uvicorn), and the
real `suparag mcp` command as a stdio subprocess.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import jsonschema
import jwt
import pytest
from conftest import READABLE, TEMPLATE, create_database, make_world
from psycopg.types.json import Jsonb
from test_search_cli import CORPUS, CORPUS_READABLE

from worker.db import as_request, connect
from worker.devstack.postgres import free_port
from worker.jobs.embedding import EmbeddingWorker
from worker.mcpserver.auth import TokenVerifier
from worker.mcpserver.knowledge import MAX_LIMIT, KnowledgeBase
from worker.mcpserver.server import HTTP_PATH, build_server, http_app, http_caller

SECRET = "mcp-test-secret-" + "x" * 32
TOOLS = {"search_knowledge_base", "ask", "get_document"}


def token(claims: dict[str, Any], *, secret: str = SECRET, lifetime: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({**claims, "iat": now, "exp": now + lifetime}, secret, algorithm="HS256")


class Setup:
    def __init__(self, db_url: str, world: Any, ids: dict[str, Any]) -> None:
        self.db_url, self.world, self.ids = db_url, world, ids
        self.names = {str(v): k for k, v in ids.items()}

    def token_of(self, user: str, **kwargs: Any) -> str:
        return token(self.world.users[user].claims(), **kwargs)

    def readable(self, user: str) -> set[str]:
        return READABLE[user] | CORPUS_READABLE[user]


@pytest.fixture(scope="module")
def setup(pg_server, template_url, embedder) -> Setup:
    url = create_database(pg_server, template=TEMPLATE)
    with connect(url) as conn:
        world = make_world(conn)
        ids = dict(world.docs)
        for name, (owner, team, visibility, content, metadata) in CORPUS.items():
            row = conn.execute(
                "insert into public.documents (owner_id, team, visibility, title, content,"
                " metadata) values (%s, %s, %s, %s, %s, %s) returning id",
                (world.users[owner].id, team, visibility, name, content, Jsonb(metadata)),
            ).fetchone()
            assert row is not None
            ids[name] = row["id"]
        conn.commit()
    worker = EmbeddingWorker(url, embedder)
    try:
        assert worker.drain().embedded == len(ids)
    finally:
        worker.close()
    return Setup(url, world, ids)


def knowledge_base(setup: Setup, embedder: Any) -> KnowledgeBase:
    kb = KnowledgeBase(setup.db_url, answer_timeout=30.0)
    kb._embedders[embedder.name] = embedder  # the session's loaded model, not a second copy
    return kb


@pytest.fixture(scope="module")
def http_url(setup, embedder) -> Iterator[str]:
    """The real streamable HTTP app under uvicorn on a free port; its /mcp URL."""
    import uvicorn

    verifier = TokenVerifier(jwt_secret=SECRET)
    port = free_port()
    url = f"http://127.0.0.1:{port}{HTTP_PATH}"
    server = build_server(knowledge_base(setup, embedder), http_caller,
                          token_verifier=verifier, issuer_url="http://127.0.0.1:9/auth/v1",
                          resource_url=url)
    config = uvicorn.Config(http_app(server, verifier), host="127.0.0.1", port=port,
                            log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "the MCP HTTP server did not start"
        time.sleep(0.05)
    yield url
    uv.should_exit = True
    thread.join(10)


# -- clients ---------------------------------------------------------------------------


def over_http(url: str, access_token: str | None, calls: Any) -> Any:
    """Run `await calls(client)` with the SDK's Client over streamable HTTP."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> Any:
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
                Client(streamable_http_client(url, http_client=http)) as client:
            return await calls(client)

    return anyio.run(main)


def over_stdio(args: list[str], env: dict[str, str], calls: Any) -> Any:
    """Run `await calls(client)` with the SDK's Client on `suparag mcp ARGS` over stdio."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "cli", "mcp", *args],
                                   env=env, cwd=os.getcwd())

    async def main() -> Any:
        async with Client(params, read_timeout_seconds=120) as client:
            return await calls(client)

    return anyio.run(main)


def stdio_env(setup: Setup, **extra: str) -> dict[str, str]:
    env = {"SUPARAG_DB_URL": setup.db_url, "PYTHONPATH": os.getcwd(),
           "HF_HUB_OFFLINE": "1", **extra}
    return env


def structured(result: Any) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error
    return " ".join(part.text for part in result.content)


async def search_titles(client: Any, query: str = "anything at all",
                        **kwargs: Any) -> list[str]:
    result = await client.call_tool("search_knowledge_base",
                                    {"query": query, "limit": MAX_LIMIT, **kwargs})
    return [hit["title"] for hit in structured(result)["results"]]


def readable_by_select(setup: Setup, user: str) -> set[str]:
    with connect(setup.db_url) as conn, as_request(conn, setup.world.users[user].claims()):
        return {r["title"] for r in conn.execute("select title from public.documents")}


# -- tools and schemas -----------------------------------------------------------------


def test_tool_schemas_are_valid_json_schemas_with_limits(setup, http_url):
    tools = over_http(http_url, setup.token_of("alice"), lambda c: c.list_tools()).tools
    assert {tool.name for tool in tools} == TOOLS
    by_name = {tool.name: tool for tool in tools}
    for tool in tools:
        assert tool.description
        jsonschema.Draft202012Validator.check_schema(tool.input_schema)
        if tool.output_schema is not None:
            jsonschema.Draft202012Validator.check_schema(tool.output_schema)
    search = by_name["search_knowledge_base"].input_schema
    assert search["required"] == ["query"]
    assert search["properties"]["limit"]["maximum"] == MAX_LIMIT
    assert search["properties"]["limit"]["default"] == 5
    assert search["properties"]["query"]["maxLength"] > 0
    assert set(search["properties"]) == {"query", "limit", "filter", "hybrid"}
    assert set(by_name["ask"].input_schema["properties"]) == {"question", "conversation"}
    assert by_name["get_document"].input_schema["required"] == ["id"]
    # The outputs are described too, so a client knows what comes back.
    outputs = {name: tool.output_schema for name, tool in by_name.items()}
    assert outputs["search_knowledge_base"]["required"] == ["results"]
    passage = outputs["search_knowledge_base"]["$defs"]["Passage"]
    assert {"title", "passage", "document_id", "chunk_index"} <= set(passage["required"])
    assert {"similarity", "score", "page"} <= set(passage["properties"])
    assert {"answer", "citations", "conversation_id"} <= set(outputs["ask"]["required"])
    assert {"title", "content", "metadata"} <= set(outputs["get_document"]["required"])
    # Arguments the schema refuses are refused by the server too.
    jsonschema.validate({"query": "x", "limit": 3}, search)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"query": "x", "limit": MAX_LIMIT + 1}, search)


# -- two users, one query, each gets exactly what RLS lets them read ---------------------


def test_over_http_two_users_get_exactly_what_rls_lets_each_read(setup, http_url):
    seen = {}
    for user in ("alice", "bob"):
        titles = over_http(http_url, setup.token_of(user), search_titles)
        assert len(titles) == len(set(titles))  # one chunk per document here
        assert set(titles) == setup.readable(user) == readable_by_select(setup, user)
        seen[user] = set(titles)
    assert seen["alice"] != seen["bob"]
    assert "octopus" in seen["alice"] and "octopus" not in seen["bob"]
    assert "sourdough" in seen["bob"] and "sourdough" not in seen["alice"]


def test_over_stdio_two_users_get_exactly_what_rls_lets_each_read(setup):
    """alice as a local user (`--as`), bob with his access token (`--token` via the env)."""
    alice = over_stdio(["--as", "alice@example.com"], stdio_env(setup), search_titles)
    bob = over_stdio([], stdio_env(setup, SUPABASE_JWT_SECRET=SECRET,
                                   SUPARAG_MCP_TOKEN=setup.token_of("bob")), search_titles)
    assert set(alice) == setup.readable("alice") == readable_by_select(setup, "alice")
    assert set(bob) == setup.readable("bob") == readable_by_select(setup, "bob")


def test_search_hits_carry_citation_fields_and_filters_apply(setup, http_url):
    async def calls(client: Any) -> Any:
        top = structured(await client.call_tool(
            "search_knowledge_base", {"query": "how many hearts does an octopus have",
                                      "limit": 2}))["results"]
        geology = await search_titles(client, "rocks", filter={"topic": "geology"})
        hybrid = structured(await client.call_tool(
            "search_knowledge_base", {"query": "sourdough starter", "hybrid": True}))
        return top, geology, hybrid["results"]

    top, geology, hybrid = over_http(http_url, setup.token_of("alice"), calls)
    assert len(top) == 2
    best = top[0]
    assert best["title"] == "octopus" and "three hearts" in best["passage"]
    assert best["document_id"] == str(setup.ids["octopus"])
    assert best["chunk_index"] == 0 and isinstance(best["chunk_id"], int)
    assert 0 < best["similarity"] <= 1 and best["rank"] == 1
    assert top[0]["similarity"] >= top[1]["similarity"]
    assert set(geology) == {"volcano", "glacier"}
    # alice may not read the sourdough document: hybrid (full text) must not find it either.
    assert "sourdough" not in {hit["title"] for hit in hybrid}
    assert all("score" in hit and "similarity" not in hit for hit in hybrid)


# -- refused tokens --------------------------------------------------------------------


def _initialize(url: str, headers: dict[str, str]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}}
    return httpx.post(url, json=body, headers={
        "accept": "application/json, text/event-stream", **headers}, timeout=30)


@pytest.mark.parametrize("case", ["missing", "garbage", "forged", "expired", "anon",
                                  "service_role", "no_sub"])
def test_bad_tokens_are_refused_with_the_reason(setup, http_url, case):
    now = int(time.time())
    tokens = {
        "missing": None,
        "garbage": "not.a.jwt",
        "forged": setup.token_of("alice", secret="someone-elses-secret-" + "y" * 32),
        "expired": setup.token_of("alice", lifetime=-60),
        "anon": token({"role": "anon", "iss": "supabase"}),
        "service_role": token({"role": "service_role", "iss": "supabase"}),
        "no_sub": jwt.encode({"role": "authenticated", "exp": now + 60}, SECRET,
                             algorithm="HS256"),
    }
    value = tokens[case]
    response = _initialize(http_url, {"authorization": f"Bearer {value}"} if value else {})
    assert response.status_code == 401
    reason = response.json()["error_description"]
    assert response.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    expected = {"missing": "no access token", "garbage": "invalid JWT",
                "forged": "Signature verification failed", "expired": "expired",
                "anon": "'anon' is refused", "service_role": "'service_role' is refused",
                "no_sub": "sub"}[case]
    assert expected in reason
    # And a valid token gets through the same door.
    assert _initialize(http_url, {"authorization": f"Bearer {setup.token_of('alice')}"}
                       ).status_code == 200


def test_the_sdk_client_with_an_expired_token_cannot_connect(setup, http_url):
    from mcp import MCPError

    with pytest.raises(ExceptionGroup) as failure:
        over_http(http_url, setup.token_of("alice", lifetime=-5), lambda c: c.list_tools())
    # The SDK reports the 401 as an error response; test_bad_tokens_... reads the reason.
    assert failure.group_contains(MCPError, depth=2)


def test_stdio_refuses_a_forged_token_at_start(setup):
    import subprocess

    env = {**os.environ, **stdio_env(
        setup, SUPABASE_JWT_SECRET=SECRET,
        SUPARAG_MCP_TOKEN=setup.token_of("alice", secret="not-the-project-secret-" + "z" * 30))}
    done = subprocess.run([sys.executable, "-m", "cli", "mcp"], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "invalid JWT" in done.stderr and "Signature verification failed" in done.stderr
    assert done.stdout == ""


def test_a_stdio_token_is_verified_on_every_call(setup, embedder):
    """A token that expires while a desktop client is connected stops working then."""
    from mcp import Client

    from worker.mcpserver.server import token_caller

    verifier = TokenVerifier(jwt_secret=SECRET)
    short = setup.token_of("alice", lifetime=5)  # time for the first call on a slow machine
    expires = jwt.decode(short, options={"verify_signature": False})["exp"]
    server = build_server(knowledge_base(setup, embedder), token_caller(verifier, short))

    async def main() -> tuple[Any, Any]:
        async with Client(server) as client:
            first = await client.call_tool("search_knowledge_base", {"query": "octopus"})
            await anyio.sleep(max(0.0, expires - time.time()) + 1.5)
            second = await client.call_tool("search_knowledge_base", {"query": "octopus"})
            return first, second

    first, second = anyio.run(main)
    assert structured(first)["results"]
    assert "JWT expired" in error_text(second)


# -- inputs and documents --------------------------------------------------------------


def test_empty_and_oversized_inputs_are_clear_errors(setup, http_url):
    async def calls(client: Any) -> list[str]:
        results = [
            await client.call_tool("search_knowledge_base", {"query": "   "}),
            await client.call_tool("search_knowledge_base", {"query": ""}),
            await client.call_tool("search_knowledge_base", {"query": "x" * 2001}),
            await client.call_tool("search_knowledge_base", {"query": "x", "limit": 0}),
            await client.call_tool("search_knowledge_base",
                                   {"query": "x", "filter": {f"k{i}": i for i in range(17)}}),
            await client.call_tool("ask", {"question": " \n "}),
            await client.call_tool("ask", {"question": "why?", "conversation": "nope"}),
        ]
        return [error_text(result) for result in results]

    blank, empty, long, zero, wide, blank_question, bad_conversation = over_http(
        http_url, setup.token_of("alice"), calls)
    assert "the query is empty" in blank
    assert "query" in empty and "at least 1 character" in empty
    assert "query" in long and "at most 2000" in long
    assert "limit" in zero
    assert "filter has 17 keys; the limit is 16" in wide
    assert "the question is empty" in blank_question
    assert "is not an id" in bad_conversation


def test_get_document_reads_as_the_user_and_hides_what_they_may_not_read(setup, http_url):
    octopus = str(setup.ids["octopus"])  # alice's private document
    missing = str(uuid.uuid4())

    async def calls(client: Any) -> list[Any]:
        return [await client.call_tool("get_document", {"id": value})
                for value in (octopus, missing, "not-an-id")]

    own, _, _ = over_http(http_url, setup.token_of("alice"), calls)
    hidden, unknown, malformed = over_http(http_url, setup.token_of("bob"), calls)
    document = structured(own)
    assert document["title"] == "octopus" and "three hearts" in document["content"]
    assert document["document_id"] == octopus and document["visibility"] == "private"
    assert document["truncated"] is False
    # Not readable and not there: the same error, only the id differs.
    assert error_text(hidden).replace(octopus, "ID") == error_text(unknown).replace(missing, "ID")
    assert "does not exist or you may not read it" in error_text(hidden)
    assert "not a document id" in error_text(malformed)


def test_ask_answers_through_the_queue_citing_only_what_the_asker_may_read(setup, http_url):
    question = "How many hearts does an octopus have?"

    async def calls(client: Any) -> Any:
        first = structured(await client.call_tool("ask", {"question": question}))
        follow = structured(await client.call_tool(
            "ask", {"question": "And what colour is its blood?",
                    "conversation": first["conversation_id"]}))
        return first, follow

    alice, follow = over_http(http_url, setup.token_of("alice"), calls)
    bob, _ = over_http(http_url, setup.token_of("bob"), calls)
    assert alice["status"] == "done" and "three hearts" in alice["answer"]
    cited = {setup.names[c["document_id"]] for c in alice["citations"]}
    assert "octopus" in cited and cited <= setup.readable("alice")
    assert follow["conversation_id"] == alice["conversation_id"]
    bob_cited = {setup.names[c["document_id"]] for c in bob["citations"]}
    assert bob["status"] == "done" and bob_cited <= setup.readable("bob")
    assert "octopus" not in bob_cited and "three hearts" not in bob["answer"]
    # The same queue `suparag ask` uses: the rows are there, owned by each asker.
    with connect(setup.db_url) as conn:
        askers = {row["asker_id"] for row in conn.execute(
            "select asker_id from public.answers where question_id = any(%s)",
            ([uuid.UUID(alice["question_id"]), uuid.UUID(bob["question_id"])],))}
    assert askers == {setup.world.users["alice"].id, setup.world.users["bob"].id}


def test_output_is_json(setup, http_url):
    """structured_content round-trips as JSON (ids and times as strings)."""
    result = over_http(http_url, setup.token_of("carol"), lambda c: c.call_tool(
        "get_document", {"id": str(setup.ids["chess"])}))
    assert json.loads(json.dumps(structured(result)))["title"] == "chess"


def test_an_mcp_session_is_bound_to_the_user_who_opened_it(setup, http_url):
    """bob's valid token with alice's session id is refused: the SDK binds the session to
    the token's subject, so a leaked session id reads nothing as alice."""
    opened = _initialize(http_url, {"authorization": f"Bearer {setup.token_of('alice')}"})
    session = opened.headers["mcp-session-id"]
    version = opened.headers.get("mcp-protocol-version", "2025-06-18")

    def list_tools(user: str) -> httpx.Response:
        return httpx.post(http_url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                          headers={"accept": "application/json, text/event-stream",
                                   "mcp-session-id": session, "mcp-protocol-version": version,
                                   "authorization": f"Bearer {setup.token_of(user)}"},
                          timeout=30)

    refused = list_tools("bob")
    assert refused.status_code in (403, 404), refused.text
    assert "search_knowledge_base" not in refused.text
    allowed = list_tools("alice")
    assert allowed.status_code == 200 and "search_knowledge_base" in allowed.text


# -- JWKS (Supabase's asymmetric signing keys) -----------------------------------------


def test_asymmetric_tokens_are_verified_against_the_projects_jwks():
    """An ES256 token is checked against the keys the project publishes (served here over
    real HTTP); a token signed with another key, or HS256 with no secret, is refused."""
    from http.server import BaseHTTPRequestHandler

    from conftest import http_double
    from cryptography.hazmat.primitives.asymmetric import ec

    from worker.errors import InvalidToken
    from worker.mcpserver.auth import jwks_url_for

    project_key, other_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(project_key.public_key()))
    jwks = json.dumps({"keys": [{**public, "kid": "k1", "alg": "ES256", "use": "sig"}]})
    requested = []

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            body = jwks.encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "role": "authenticated", "exp": now + 60}
    with http_double(Jwks) as base:
        supabase_url = base.removesuffix("/v1")
        verifier = TokenVerifier(jwks_url=jwks_url_for(supabase_url))
        good = jwt.encode(claims, project_key, algorithm="ES256", headers={"kid": "k1"})
        assert verifier.verify(good)["sub"] == claims["sub"]
        assert requested == ["/auth/v1/.well-known/jwks.json"]
        forged = jwt.encode(claims, other_key, algorithm="ES256", headers={"kid": "k1"})
        with pytest.raises(InvalidToken, match="Signature verification failed"):
            verifier.verify(forged)
        with pytest.raises(InvalidToken, match="HS256 tokens are not accepted"):
            verifier.verify(jwt.encode(claims, SECRET, algorithm="HS256"))
        anon = jwt.encode({**claims, "role": "anon"}, project_key, algorithm="ES256",
                          headers={"kid": "k1"})
        with pytest.raises(InvalidToken, match="'anon' is refused"):
            verifier.verify(anon)
    with pytest.raises(InvalidToken, match="algorithm 'none' is not accepted"):
        TokenVerifier(jwt_secret=SECRET).verify(
            jwt.encode(claims, None, algorithm="none"))  # type: ignore[arg-type]


def test_the_command_says_who_to_answer_as(setup):
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", "mcp", *args],
                              env={**os.environ, "SUPARAG_DB_URL": setup.db_url},
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    neither = run()
    assert neither.returncode == 1 and "--as EMAIL" in neither.stderr
    both = run("--http", "--as", "alice@example.com")
    assert both.returncode == 1 and "drop --as and --token" in both.stderr
    nobody = run("--as", "nobody@example.com")
    assert nobody.returncode == 1 and "no user 'nobody@example.com'" in nobody.stderr


def test_the_http_command_serves_each_request_as_its_token(setup, tmp_path):
    """`suparag mcp --http` as a process: the local project's secret by default (as
    `suparag dev` signs tokens), alice and bob each get their own results."""
    import subprocess

    from worker.devstack.api.keys import load_or_create

    home = tmp_path / "home"
    keys = load_or_create(home)  # the secret `suparag dev` (and `suparag token`) would use
    port = free_port()
    env = {**os.environ, "SUPARAG_DB_URL": setup.db_url, "SUPARAG_HOME": str(home),
           "HF_HUB_OFFLINE": "1"}
    env.pop("SUPABASE_URL", None)
    env.pop("SUPABASE_JWT_SECRET", None)
    process = subprocess.Popen([sys.executable, "-m", "cli", "mcp", "--http", "--port",
                                str(port)], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}{HTTP_PATH}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "`suparag mcp --http` did not start"
                time.sleep(0.2)

        for name in ("alice", "bob"):
            titles = over_http(url, keys.access_token(setup.world.users[name]), search_titles)
            assert set(titles) == setup.readable(name)
        other_secret = token(setup.world.users["alice"].claims())  # not the project's
        refused = _initialize(url, {"authorization": f"Bearer {other_secret}"})
        assert refused.status_code == 401
    finally:
        process.terminate()
        process.wait(30)
