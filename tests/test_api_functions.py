"""`/functions/v1`: embed (httpx and supabase-py's functions client) and the wake-up route,
against a real server, database and model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import running_app
from supabase import create_client
from supabase_functions.errors import FunctionsHttpError

from worker.devstack.api.app import create_app
from worker.devstack.api.functions import functions_routes
from worker.devstack.api.keys import ProjectKeys, load_or_create
from worker.devstack.api.limits import (
    MAX_EMBED_INPUTS,
    MAX_EMBED_TEXT_BYTES,
    MAX_EMBED_TOTAL_BYTES,
)
from worker.models.base import Embedder
from worker.users import add_user

# supabase-py's own client construction passes a deprecated argument to the functions client.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The 'timeout' parameter is deprecated:DeprecationWarning")


@dataclass
class Api:
    url: str
    keys: ProjectKeys
    loads: list[int]

    def post(self, path: str, body: Any, *, token: str | None = "anon") -> httpx.Response:
        headers = {}
        if token is not None:
            key = self.keys.anon_key if token == "anon" else token
            # The gateway takes only a project key as apikey; a user's token goes in Bearer.
            apikey = key if key == self.keys.service_role_key else self.keys.anon_key
            headers = {"apikey": apikey, "Authorization": f"Bearer {key}"}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=60)


@pytest.fixture
def api(db_url: str, tmp_path: Path, embedder: Embedder) -> Iterator[Api]:
    keys = load_or_create(tmp_path / "home")
    loads: list[int] = []

    def load() -> Embedder:
        loads.append(1)
        return embedder

    app = create_app(db_url, keys, routes=functions_routes(keys, load))
    with running_app(app) as url:
        yield Api(url=url, keys=keys, loads=loads)


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-5)
                                    for x, y in zip(a, b, strict=True))


def test_embed_one_text_in_the_gte_small_example_shape(api, embedder):
    response = api.post("/functions/v1/embed", {"input": "who owns the database?"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"embedding", "model"}
    assert body["model"] == embedder.name
    assert len(body["embedding"]) == 384
    assert close(body["embedding"], embedder.embed(["who owns the database?"])[0])


def test_embed_a_list_and_load_the_model_once(api, embedder):
    texts = ["vector indexes", "an outage runbook"]
    for _ in range(2):
        body = api.post("/functions/v1/embed", {"input": texts}).json()
        assert set(body) == {"embeddings", "model"}
        expected = embedder.embed(texts)
        pairs = zip(body["embeddings"], expected, strict=True)
        assert [close(got, want) for got, want in pairs] == [True, True]
    assert api.loads == [1]


def test_embed_needs_a_project_jwt(api, conn):
    user = add_user(conn, "ann@example.com", team="a")
    conn.commit()
    assert api.post("/functions/v1/embed", {"input": "x"}, token=None).status_code == 401
    assert api.post("/functions/v1/embed", {"input": "x"}, token="not-a-jwt").status_code == 401
    foreign = ProjectKeys(jwt_secret="another project's secret" * 2,
                          anon_key="", service_role_key="")
    forged = foreign.access_token(user)
    assert api.post("/functions/v1/embed", {"input": "x"}, token=forged).status_code == 401
    expired = api.keys.access_token(user, lifetime=-10)
    assert api.post("/functions/v1/embed", {"input": "x"}, token=expired).status_code == 401
    # Nothing was embedded for a refused caller.
    assert api.loads == []
    for token in (api.keys.access_token(user), api.keys.service_role_key):
        assert len(api.post("/functions/v1/embed", {"input": "x"},
                            token=token).json()["embedding"]) == 384


@pytest.mark.parametrize("body", [{}, {"input": ""}, {"input": []}, {"input": [1, 2]},
                                  {"text": "wrong key"}, ["input"], {"input": ["ok", "  "]}])
def test_bad_bodies_are_400_saying_what_to_send(api, body):
    response = api.post("/functions/v1/embed", body)
    assert response.status_code == 400
    assert '{"input": "text"}' in response.json()["hint"]


def test_embed_through_supabase_py_functions_client(api, embedder):
    client = create_client(api.url, api.keys.anon_key)
    body = client.functions.invoke("embed", {"body": {"input": "vector indexes"},
                                             "responseType": "json"})
    assert isinstance(body, dict)
    assert close(body["embedding"], embedder.embed(["vector indexes"])[0])
    with pytest.raises(FunctionsHttpError):
        client.functions.invoke("embed", {"body": {"input": 5}})


def test_wake_notifies_every_listening_worker_without_a_key(api, db_url):
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("listen suparag_embedding_jobs")
        listener.execute("listen suparag_answer_jobs")
        # What the pg_net trigger posts: a webhook body and no Authorization.
        response = api.post("/functions/v1/wake", {"type": "INSERT", "table": "documents"},
                            token=None)
        assert response.status_code == 200
        channels: set[str] = set()
        deadline = time.monotonic() + 10
        while channels != {"suparag_embedding_jobs", "suparag_answer_jobs"}:
            assert time.monotonic() < deadline, f"only {channels} woke"
            for note in listener.notifies(timeout=0.5, stop_after=2):
                channels.add(note.channel)
                assert note.payload == "http"


def test_embed_input_is_capped_before_the_model_runs(api, embedder):
    """The anon key is public: the size of what it may make the model do is bounded."""
    big = "word " * (MAX_EMBED_TEXT_BYTES // 5 + 1)
    response = api.post("/functions/v1/embed", {"input": big})
    assert response.status_code == 413
    assert f"at most {MAX_EMBED_TEXT_BYTES} bytes per text" in response.json()["message"]
    many = ["x" * (MAX_EMBED_TEXT_BYTES - 1)] * (MAX_EMBED_TOTAL_BYTES // MAX_EMBED_TEXT_BYTES
                                                  + 1)
    response = api.post("/functions/v1/embed", {"input": many})
    assert response.status_code == 413
    assert f"at most {MAX_EMBED_TOTAL_BYTES} bytes per call" in response.json()["message"]
    response = api.post("/functions/v1/embed", {"input": ["x"] * (MAX_EMBED_INPUTS + 1)})
    assert response.status_code == 400 and str(MAX_EMBED_INPUTS) in response.json()["message"]
    # Within the bytes but longer than the model reads: refused, not cut off silently.
    long = "the " * (embedder.max_tokens + 10)
    response = api.post("/functions/v1/embed", {"input": ["short", long]})
    assert response.status_code == 400
    assert f"at most {embedder.max_tokens} tokens" in response.json()["message"]
    assert api.loads == [1]  # the byte limits refused before the model was loaded
    fits = "the " * (embedder.max_tokens - 10)
    assert len(api.post("/functions/v1/embed", {"input": fits}).json()["embedding"]) == 384
