"""`/rest/v1` through the official supabase-py client, against a real server and database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import running_app
from postgrest.exceptions import APIError
from supabase import Client, ClientOptions, create_client

from worker.devstack.api.app import create_app
from worker.devstack.api.keys import ProjectKeys, load_or_create
from worker.jobs.embedding import EmbeddingWorker
from worker.users import add_user, find_user

PASSWORD = "correct horse battery"


@dataclass
class Api:
    url: str
    keys: ProjectKeys
    db_url: str

    def client(self, key: str | None = None) -> Client:
        """A fresh supabase-py client, as an app creates it."""
        return create_client(self.url, key or self.keys.anon_key)

    def get(self, path: str, *, token: str | None = None, **params: Any) -> httpx.Response:
        """A raw request, for what the client library hides (status codes, headers)."""
        key = token or self.keys.anon_key
        return httpx.get(f"{self.url}{path}", params=params,
                         headers={"apikey": self.apikey(key), "Authorization": f"Bearer {key}"})

    def apikey(self, token: str) -> str:
        """The apikey header an app sends with token: the project key it was made with
        (the gateway accepts no other), i.e. the anon key beside a user's token."""
        return token if token == self.keys.service_role_key else self.keys.anon_key

    def post(self, path: str, body: Any, *, token: str | None = None,
             content: bytes | None = None) -> httpx.Response:
        key = token or self.keys.anon_key
        headers = {"apikey": self.apikey(key), "Authorization": f"Bearer {key}",
                   "Content-Type": "application/json"}
        if content is not None:
            return httpx.post(f"{self.url}{path}", content=content, headers=headers)
        return httpx.post(f"{self.url}{path}", json=body, headers=headers)


def serve(db_url: str, home: Path) -> Iterator[Api]:
    """The API in-process on a free port (uvicorn on a thread), until the test ends."""
    keys = load_or_create(home)
    with running_app(create_app(db_url, keys)) as url:
        yield Api(url=url, keys=keys, db_url=db_url)


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from serve(db_url, tmp_path / "home")


def signed_in(api: Api, conn: Any, email: str, *, team: str | None) -> Client:
    """Sign up through the API, get a team from the operator, sign in again."""
    client = api.client()
    client.auth.sign_up({"email": email, "password": PASSWORD})
    if team is not None:
        add_user(conn, email, team=team)  # app_metadata: operator-set, as on Supabase
        conn.commit()
    client.auth.sign_in_with_password({"email": email, "password": PASSWORD})
    return client


def titles(rows: list[dict[str, Any]]) -> set[str]:
    return {row["title"] for row in rows}


def test_rls_bounded_search_and_selects_through_the_client(api, conn, embedder):
    red = signed_in(api, conn, "rita@example.com", team="red")
    blue = signed_in(api, conn, "ben@example.com", team="blue")
    for client, who in ((red, "rita"), (blue, "ben")):
        team = "red" if who == "rita" else "blue"
        inserted = client.table("documents").insert([
            {"title": f"{who} private", "content": f"{who} keeps notes on vector indexes",
             "visibility": "private", "team": team, "metadata": {"kind": "note"}},
            {"title": f"{who} team", "content": f"{who}'s team runbook for vector indexes",
             "visibility": "team", "team": team, "metadata": {"kind": "runbook"}},
            {"title": f"{who} public", "content": f"{who} writes about vector indexes",
             "visibility": "public", "team": team, "metadata": {}},
        ]).execute()
        assert len(inserted.data) == 3
        assert {row["owner_id"] for row in inserted.data} == {client.auth.get_user().user.id}

    EmbeddingWorker(api.db_url, embedder).drain()

    query_embedding = embedder.embed(["vector indexes"])[0]
    matches = red.rpc("match_documents", {"query_embedding": list(query_embedding),
                                          "match_count": 20}).execute().data
    assert titles(matches) == {"rita private", "rita team", "rita public", "ben public"}
    hybrid = blue.rpc("hybrid_search", {"query_text": "vector indexes",
                                        "query_embedding": str(list(query_embedding)),
                                        "match_count": 20}).execute().data
    assert titles(hybrid) == {"ben private", "ben team", "ben public", "rita public"}
    # The filter argument is metadata containment.
    runbooks = red.rpc("match_documents", {"query_embedding": list(query_embedding),
                                           "match_count": 20,
                                           "filter": {"kind": "runbook"}}).execute().data
    assert titles(runbooks) == {"rita team"}

    # Table selects with filters, as the same users.
    rows = red.table("documents").select("title, visibility").eq("visibility", "public") \
        .order("title", desc=True).execute().data
    assert rows == [{"title": "rita public", "visibility": "public"},
                    {"title": "ben public", "visibility": "public"}]
    rows = blue.table("documents").select("title").in_("visibility", ["private", "team"]) \
        .order("title").execute().data
    assert [r["title"] for r in rows] == ["ben private", "ben team"]
    rows = red.table("documents").select("title").order("title").limit(2).execute().data
    assert [r["title"] for r in rows] == ["ben public", "rita private"]
    rows = red.table("documents").select("title").neq("visibility", "public") \
        .like("title", "rita*").execute().data
    assert titles(rows) == {"rita private", "rita team"}
    assert red.table("documents").select("title").eq("metadata->>kind", "note") \
        .execute().data == [{"title": "rita private"}]
    counted = blue.table("documents").select("id", count="exact").limit(1).execute()
    assert counted.count == 4 and len(counted.data) == 1
    # Chunks follow their documents.
    chunk_docs = {r["document_id"] for r in
                  red.table("document_chunks").select("document_id").execute().data}
    red_docs = {r["id"] for r in red.table("documents").select("id").execute().data}
    assert chunk_docs == red_docs and len(red_docs) == 4

    # Anon sees only public rows.
    anon = api.client()
    assert titles(anon.table("documents").select("title").execute().data) == {
        "rita public", "ben public"}
    anon_matches = anon.rpc("match_documents", {"query_embedding": list(query_embedding),
                                                "match_count": 20}).execute().data
    assert titles(anon_matches) == {"rita public", "ben public"}


def test_logical_filters_through_the_client(api, conn):
    """`.or_()` with nested and() and quoted values; it narrows what RLS allows, never widens."""
    red = signed_in(api, conn, "rita@example.com", team="red")
    blue = signed_in(api, conn, "ben@example.com", team="blue")
    for client, owner in ((red, "rita"), (blue, "ben")):
        client.table("documents").insert(
            [{"title": f"{owner} {v}", "content": "x", "visibility": v,
              "team": "red" if owner == "rita" else "blue"}
             for v in ("private", "team", "public")]).execute()
    red.table("documents").insert({"title": "rita (a, b)", "content": "x",
                                   "visibility": "private"}).execute()

    rows = red.table("documents").select("title") \
        .or_("visibility.eq.public,and(visibility.eq.team,title.like.rita*)").execute().data
    assert titles(rows) == {"rita public", "ben public", "rita team"}
    # A quoted value holds the commas and parentheses of a title.
    rows = red.table("documents").select("title") \
        .or_('title.eq."rita (a, b)",title.in.("ben team","rita team")').execute().data
    assert titles(rows) == {"rita (a, b)", "rita team"}  # ben's team row is not red's
    # Combined with a plain filter (and), and negated.
    rows = blue.table("documents").select("title").neq("visibility", "private") \
        .or_("title.ilike.*TEAM,title.like.rita*").execute().data
    assert titles(rows) == {"ben team", "rita public"}
    negated = httpx.get(f"{api.url}/rest/v1/documents",
                        params={"select": "title", "not.or": "(visibility.eq.public,"
                                "title.like.*team)"},
                        headers={"apikey": api.keys.anon_key,
                                 "Authorization": f"Bearer {blue.auth.get_session().access_token}"})
    assert negated.status_code == 200 and titles(negated.json()) == {"ben private"}
    # Another user's private row cannot be reached by naming it.
    assert blue.table("documents").select("title").or_("title.eq.rita private,"
                                                          "title.eq.ben private") \
        .execute().data == [{"title": "ben private"}]

    for bad_tree in ("(title)", "(title.eq.a))", '(title.eq."a)', "()", "title.eq.a"):
        bad = httpx.get(f"{api.url}/rest/v1/documents", params={"or": bad_tree},
                        headers={"apikey": api.keys.anon_key})
        assert bad.status_code == 400 and bad.json()["code"] == "PGRST100", bad_tree


def test_embedded_resources_follow_foreign_keys_under_rls(api, conn):
    """`select=*,relation(...)`: arrays one-to-many, objects to-one, each row through RLS."""
    red = signed_in(api, conn, "rita@example.com", team="red")
    blue = signed_in(api, conn, "ben@example.com", team="blue")
    doc = red.table("documents").insert({"title": "guide", "content": "x",
                                         "visibility": "public"}).execute().data[0]
    for index in (1, 0):
        conn.execute("insert into public.document_chunks (document_id, chunk_index, content,"
                     " embedding_model, content_hash) values (%s, %s, %s, 'm', 'h')",
                     (doc["id"], index, f"part {index}"))
    # A table whose rows only their owner reads, hanging off a public document.
    conn.execute("""
        create table public.notes (
          id bigint generated always as identity primary key,
          document_id uuid not null references public.documents (id),
          owner_id uuid not null default auth.uid(), body text);
        alter table public.notes enable row level security;
        create policy own on public.notes for all to authenticated
          using (owner_id = auth.uid()) with check (owner_id = auth.uid());
        grant select, insert on public.notes to authenticated;
    """)
    conn.commit()
    red.table("notes").insert({"document_id": doc["id"], "body": "rita's note"}).execute()
    blue.table("notes").insert({"document_id": doc["id"], "body": "ben's note"}).execute()

    # one-to-many: an array (in chunk order when asked for by the client's order())
    rows = blue.table("documents").select("title, parts:document_chunks(chunk_index, content)") \
        .eq("id", doc["id"]).execute().data
    assert rows[0]["title"] == "guide"
    assert sorted(p["chunk_index"] for p in rows[0]["parts"]) == [0, 1]
    # Embedded rows are read as the caller: each sees only their own note.
    for client, body in ((red, "rita's note"), (blue, "ben's note")):
        got = client.table("documents").select("id, notes(body)").eq("id", doc["id"]) \
            .execute().data
        assert got == [{"id": doc["id"], "notes": [{"body": body}]}]
    # many-to-one: an object; nested embedding goes on down.
    chunk = red.table("document_chunks").select(
        "chunk_index, documents(title, document_chunks(chunk_index))").eq("chunk_index", 0) \
        .execute().data
    assert chunk[0]["documents"]["title"] == "guide"
    assert sorted(c["chunk_index"] for c in chunk[0]["documents"]["document_chunks"]) == [0, 1]

    # one-to-one (answers.question_id is unique): an object, or null before the answer.
    question = red.table("questions").insert({"question": "what is in the guide?"}) \
        .execute().data[0]
    got = red.table("questions").select("question, answers(content, status)") \
        .eq("id", question["id"]).execute().data
    assert got == [{"question": "what is in the guide?", "answers": None}]
    conn.execute("insert into public.answers (question_id, asker_id, conversation_id, content,"
                 " mode, status) select id, asker_id, conversation_id, 'two parts', 'extractive',"
                 " 'done' from public.questions where id = %s", (question["id"],))
    conn.commit()
    got = red.table("questions").select("question, answers(content, status)") \
        .eq("id", question["id"]).single().execute().data
    assert got["answers"] == {"content": "two parts", "status": "done"}
    # Returned rows of a write embed too.
    made = red.table("notes").insert({"document_id": doc["id"], "body": "second"}) \
        .execute()  # the client asks for representation with select=*
    assert made.data[0]["body"] == "second"
    embedded_insert = httpx.post(
        f"{api.url}/rest/v1/notes", params={"select": "body,documents(title)"},
        json={"document_id": doc["id"], "body": "third"},
        headers={"apikey": api.keys.anon_key, "Prefer": "return=representation",
                 "Authorization": f"Bearer {red.auth.get_session().access_token}"})
    assert embedded_insert.status_code == 201, embedded_insert.text
    assert embedded_insert.json() == [{"body": "third", "documents": {"title": "guide"}}]

    headers = {"apikey": api.keys.anon_key}
    unknown = httpx.get(f"{api.url}/rest/v1/documents", params={"select": "id,questions(*)"},
                        headers=headers)
    assert unknown.status_code == 400 and unknown.json()["code"] == "PGRST200"
    on_rpc = httpx.post(f"{api.url}/rest/v1/rpc/match_documents",
                        params={"select": "chunk_id,documents(*)"}, headers=headers,
                        json={"query_embedding": [0.0] * 383 + [1.0], "match_count": 1})
    assert on_rpc.status_code == 400 and on_rpc.json()["code"] == "PGRST100"


def test_updates_and_deletes_stay_within_rls(api, conn):
    red = signed_in(api, conn, "rita@example.com", team="red")
    blue = signed_in(api, conn, "ben@example.com", team="blue")
    mine = red.table("documents").insert({"title": "draft", "content": "one",
                                          "visibility": "public", "team": "red"}).execute()
    doc_id = mine.data[0]["id"]
    # Another user's update and delete match no rows (RLS), and change nothing.
    assert blue.table("documents").update({"title": "hijacked"}).eq("id", doc_id) \
        .execute().data == []
    assert blue.table("documents").delete().eq("id", doc_id).execute().data == []
    updated = red.table("documents").update({"title": "final", "metadata": {"v": 2}}) \
        .eq("id", doc_id).execute().data
    assert updated[0]["title"] == "final" and updated[0]["metadata"] == {"v": 2}
    assert updated[0]["content_version"] == 2
    assert red.table("documents").delete().eq("id", doc_id).execute().data[0]["id"] == doc_id
    assert conn.execute("select count(*) as n from public.documents").fetchone()["n"] == 0


def test_requests_run_as_the_verified_caller(api, conn):
    """Role and request.* settings are set per request, the way PostgREST sets them."""
    conn.execute("""
        create function public.whoami() returns jsonb language sql stable as $$
          select jsonb_build_object(
            'role', current_user, 'sub', auth.uid(), 'email', auth.email(),
            'team', auth.jwt() -> 'app_metadata' ->> 'team',
            'method', current_setting('request.method', true),
            'path', current_setting('request.path', true),
            'read_only', current_setting('transaction_read_only'))
        $$;
        create function public.bump(n int) returns int language sql volatile as $$
          select n + 1
        $$;
        create function public.note(body text) returns int language sql volatile as $$
          insert into public.documents (title, content) values ('note', body) returning 1
        $$;
    """)
    conn.commit()
    red = signed_in(api, conn, "rita@example.com", team="red")
    me = red.rpc("whoami", {}).execute().data
    rita = find_user(conn, "rita@example.com")
    assert me == {"role": "authenticated", "sub": str(rita.id), "email": "rita@example.com",
                  "team": "red", "method": "POST", "path": "/rest/v1/rpc/whoami",
                  "read_only": "on"}
    assert api.client().rpc("whoami", {}).execute().data["role"] == "anon"
    service = api.client(api.keys.service_role_key)
    assert service.rpc("whoami", {}).execute().data["role"] == "service_role"
    # GET /rpc with arguments as query parameters; volatile POST runs read-write.
    assert api.get("/rest/v1/rpc/bump", n="41").json() == 42
    assert red.rpc("bump", {"n": 1}).execute().data == 2
    # A write through GET runs read-only, as PostgREST: 25006 -> 405. POST may write.
    token = red.auth.get_session().access_token
    response = api.get("/rest/v1/rpc/note", token=token, body="hi")
    assert response.status_code == 405 and response.json()["code"] == "25006"
    assert red.rpc("note", {"body": "hi"}).execute().data == 1


def test_bad_tokens_are_401(api, conn):
    user = add_user(conn, "rita@example.com", team="red")
    conn.commit()
    wrong = ProjectKeys(jwt_secret="not-the-project-secret-" * 3, anon_key="",
                        service_role_key="")
    forged = wrong.access_token(user)
    response = api.get("/rest/v1/documents", token=forged)
    assert response.status_code == 401
    assert response.json()["code"] == "PGRST301"
    expired = api.keys.access_token(user, lifetime=-60)
    response = api.get("/rest/v1/documents", token=expired)
    assert response.status_code == 401
    assert response.json() == {"code": "PGRST303", "details": None, "hint": None,
                               "message": "JWT expired"}
    # A validly signed token with a role that is not an API role (e.g. postgres).
    superuser = jwt.encode({"role": "postgres", "exp": int(time.time()) + 60},
                           api.keys.jwt_secret, algorithm="HS256")
    assert api.get("/rest/v1/documents", token=superuser).status_code == 401
    missing = httpx.get(f"{api.url}/rest/v1/documents")
    assert missing.status_code == 401 and missing.json()["code"] == "PGRST301"
    # And through the client: a forged token is refused, not treated as anon.
    client = api.client(forged)
    with pytest.raises(APIError) as caught:
        client.table("documents").select("*").execute()
    assert caught.value.code == "PGRST301"


def test_private_schema_is_unreachable(api, conn):
    service = api.client(api.keys.service_role_key)
    for function in ("claim_embedding_jobs", "fail_embedding_job"):
        with pytest.raises(APIError) as caught:
            service.rpc(function, {}).execute()
        assert caught.value.code == "PGRST202"
    response = api.post("/rest/v1/rpc/claim_embedding_jobs", {"worker_id": "x", "batch": 1})
    assert response.status_code == 404 and response.json()["code"] == "PGRST202"
    response = api.get("/rest/v1/embedding_jobs")
    assert response.status_code == 404 and response.json()["code"] == "PGRST205"
    # Another schema by profile header, or by a dotted name, is not served either.
    response = httpx.get(f"{api.url}/rest/v1/embedding_jobs",
                         headers={"apikey": api.keys.service_role_key,
                                  "Accept-Profile": "suparag_private"})
    assert response.status_code == 406 and response.json()["code"] == "PGRST106"
    assert api.get("/rest/v1/suparag_private.embedding_jobs").status_code == 404
    assert api.get("/rest/v1/users", token=api.keys.service_role_key).status_code == 404


def test_errors_are_postgrest_shaped(api, conn, world):
    alice = api.keys.access_token(world.users["alice"])
    # A body that is not JSON.
    response = api.post("/rest/v1/documents", None, token=alice, content=b"{not json")
    assert response.status_code == 400
    assert response.json()["code"] == "PGRST102"
    assert set(response.json()) == {"code", "message", "details", "hint"}
    # An unknown function.
    response = api.post("/rest/v1/rpc/no_such_function", {"a": 1}, token=alice)
    assert response.status_code == 404 and response.json()["code"] == "PGRST202"
    assert "public.no_such_function(a)" in response.json()["message"]
    # Known function, unknown argument name.
    response = api.post("/rest/v1/rpc/match_documents", {"nope": 1}, token=alice)
    assert response.status_code == 404 and response.json()["code"] == "PGRST202"
    # A wrong argument type.
    response = api.post("/rest/v1/rpc/match_documents",
                        {"query_embedding": "not a vector", "match_count": 3}, token=alice)
    assert response.status_code == 400
    assert response.json()["code"] == "22P02"
    response = api.post("/rest/v1/rpc/match_documents",
                        {"query_embedding": [0.5] * 384, "match_count": "three"}, token=alice)
    assert response.status_code == 400 and response.json()["code"] == "22P02"
    # An unknown column, a bad filter, a check violation, a duplicate key.
    response = api.post("/rest/v1/documents", {"title": "t", "colour": "red"}, token=alice)
    assert response.status_code == 400 and response.json()["code"] == "PGRST204"
    response = api.get("/rest/v1/documents", token=alice, id="within.3")
    assert response.status_code == 400 and response.json()["code"] == "PGRST100"
    response = api.post("/rest/v1/documents", {"title": "t", "content": "c",
                                               "visibility": "everyone"}, token=alice)
    assert response.status_code == 400 and response.json()["code"] == "23514"
    existing = str(world.docs["alice_public"])
    # The anon key as apikey, the user's token as Bearer (the gateway takes no other apikey).
    client = create_client(api.url, api.keys.anon_key, options=ClientOptions(
        auto_refresh_token=False, headers={"Authorization": f"Bearer {alice}"}))
    with pytest.raises(APIError) as caught:
        client.table("documents").insert({"id": existing, "title": "t", "content": "c"}) \
            .execute()
    assert caught.value.code == "23505"
    # Insufficient privilege: 401 for anon, 403 for a signed-in user.
    anon = api.post("/rest/v1/documents", {"title": "t", "content": "c"})
    assert anon.status_code == 401 and anon.json()["code"] == "42501"
    chunk = {"document_id": existing, "chunk_index": 9, "content": "x"}
    denied = api.post("/rest/v1/document_chunks", chunk, token=alice)
    assert denied.status_code == 403 and denied.json()["code"] == "42501"


def test_filters_cannot_inject_sql(api, world):
    service = api.keys.service_role_key
    evil = {"title": "eq.x' or '1'='1", "visibility": "in.(public,\"x') or true --\")"}
    response = api.get("/rest/v1/documents", token=service, **evil)
    assert response.status_code == 200 and response.json() == []
    response = api.get("/rest/v1/documents", token=service,
                       select='title,"id" from public.documents; --')
    assert response.status_code == 400
    response = api.get("/rest/v1/documents", token=service, order="title;drop table x")
    assert response.status_code == 400
    assert len(api.get("/rest/v1/documents", token=service).json()) == len(world.docs)


def test_single_object_and_content_range(api, world):
    service = api.keys.service_role_key
    doc = str(world.docs["bob_team"])
    one = api.client(service).table("documents").select("title").eq("id", doc).single() \
        .execute()
    assert one.data == {"title": "bob_team"}
    response = api.get("/rest/v1/documents", token=service, select="id", order="title",
                       offset="1", limit="2")
    assert response.headers["content-range"] == "1-2/*"
    assert response.status_code == 200 and len(response.json()) == 2


def test_upsert_merges_on_the_primary_key(api, world):
    service = api.client(api.keys.service_role_key)
    doc = str(world.docs["bob_team"])
    bob = str(world.users["bob"].id)
    row = {"id": doc, "owner_id": bob, "team": "b", "visibility": "team"}
    merged = service.table("documents").upsert(
        {**row, "title": "renamed", "content": "new text"}).execute().data
    assert merged[0]["id"] == doc and merged[0]["title"] == "renamed"
    assert merged[0]["content_version"] == 2  # a real update: the trigger bumped it
    rows = service.table("documents").select("id").execute().data
    assert len(rows) == len(world.docs)
    kept = service.table("documents").upsert(
        {**row, "title": "ignored", "content": "x"}, ignore_duplicates=True).execute().data
    assert kept == []
    title = service.table("documents").select("title").eq("id", doc).single().execute()
    assert title.data == {"title": "renamed"}
