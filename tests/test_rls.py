"""Row level security, exercised the way PostgREST runs a request.

Each check runs in a transaction that sets the role and request.jwt.claims
(worker.db.set_request_context) and is rolled back, for anon, the owner,
another user, a team mate, a user who put a team in user_metadata, and
service_role.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import DOCS, READABLE, World, claims_of, unit_vector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.db import set_request_context

CALLERS = sorted(READABLE)


def names(world: World, ids: set[Any]) -> set[str]:
    by_id = {v: k for k, v in world.docs.items()}
    return {by_id[i] for i in ids}


def run_as(conn: psycopg.Connection[Any], world: World, caller: str, sql: str,
           params: Any = None) -> list[dict[str, Any]]:
    with conn.transaction(force_rollback=True):
        set_request_context(conn, claims_of(world, caller))
        return conn.execute(sql, params).fetchall()


def write_as(conn: psycopg.Connection[Any], world: World, caller: str, sql: str,
             params: Any = None) -> int:
    """Rows affected by a write as caller (rolled back afterwards)."""
    with conn.transaction(force_rollback=True):
        set_request_context(conn, claims_of(world, caller))
        return conn.execute(sql, params).rowcount


# -- reads ------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", CALLERS)
def test_documents_select(conn, world, caller):
    rows = run_as(conn, world, caller, "select id from public.documents")
    assert names(world, {r["id"] for r in rows}) == READABLE[caller]


@pytest.mark.parametrize("caller", CALLERS)
def test_chunks_select_matches_documents(conn, world, caller):
    rows = run_as(conn, world, caller, "select document_id from public.document_chunks")
    assert names(world, {r["document_id"] for r in rows}) == READABLE[caller]


@pytest.mark.parametrize("caller", CALLERS)
def test_match_documents(conn, world, caller):
    rows = run_as(
        conn, world, caller,
        "select * from public.match_documents(%s::extensions.vector, 50)", (unit_vector(0),),
    )
    assert names(world, {r["document_id"] for r in rows}) == READABLE[caller]
    # ranked by similarity, best first
    sims = [r["similarity"] for r in rows]
    assert sims == sorted(sims, reverse=True)


@pytest.mark.parametrize("caller", CALLERS)
def test_hybrid_search(conn, world, caller):
    rows = run_as(
        conn, world, caller,
        "select * from public.hybrid_search('handbook', %s::extensions.vector, 50)",
        (unit_vector(3),),
    )
    assert names(world, {r["document_id"] for r in rows}) == READABLE[caller]


@pytest.mark.parametrize("caller", CALLERS)
def test_hybrid_search_is_rrf_of_both_halves(conn, world, caller):
    """Scores and order are reciprocal rank fusion of the caller's two rankings."""
    conn.execute("update public.document_chunks set content = content || ' handbook handbook'"
                 " where document_id = %s", (world.docs["alice_team"],))
    conn.commit()
    vector, k, rrf_k = unit_vector(4), 3, 50
    full_text = run_as(conn, world, caller,
                       "select id from public.document_chunks"
                       " where fts @@ websearch_to_tsquery('english', 'handbook')"
                       " order by ts_rank_cd(fts, websearch_to_tsquery('english', 'handbook'))"
                       " desc, id limit %s", (2 * k,))
    semantic = run_as(conn, world, caller,
                      "select chunk_id as id from public.match_documents(%s::extensions.vector, %s)"
                      " order by similarity desc, chunk_id", (vector, 2 * k))
    expected: dict[int, float] = {}
    for ranking in (full_text, semantic):
        for rank, row in enumerate(ranking, start=1):
            expected[row["id"]] = expected.get(row["id"], 0.0) + 1 / (rrf_k + rank)
    best = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:k]
    rows = run_as(conn, world, caller,
                  "select chunk_id, score from public.hybrid_search("
                  "'handbook', %s::extensions.vector, %s, rrf_k => %s)", (vector, k, rrf_k))
    assert [r["chunk_id"] for r in rows] == [chunk for chunk, _ in best]
    assert [r["score"] for r in rows] == pytest.approx([score for _, score in best])
    assert len(rows) == min(k, len(READABLE[caller]))


FULL_TEXT_MATCHES = ("select id from suparag_search.full_text_matches("
                     "websearch_to_tsquery('english', %s), 50, %s)")


@pytest.mark.parametrize("caller", CALLERS)
def test_full_text_helper_returns_only_readable_chunks(conn, world, caller):
    """Called directly, hybrid_search's security-definer helper returns what a plain
    select of the same chunks would, as that caller, and nothing more."""
    conn.execute("update public.documents set metadata = '{\"kind\": \"faq\"}'"
                 " where id in (%s, %s)", (world.docs["alice_team"], world.docs["bob_team"]))
    conn.commit()
    for words, filter_ in [("handbook", "{}"), ("text of alice", "{}"),
                           ("handbook", '{"kind": "faq"}')]:
        helper = run_as(conn, world, caller, FULL_TEXT_MATCHES, (words, filter_))
        plain = run_as(conn, world, caller,
                       "select c.id from public.document_chunks c"
                       " join public.documents d on d.id = c.document_id"
                       " where c.fts @@ websearch_to_tsquery('english', %s)"
                       " and d.metadata @> %s::jsonb", (words, filter_))
        if caller == "service":
            # service_role is not subject to RLS: hybrid_search runs the plain
            # query for it, and the helper serves only anon and authenticated.
            assert helper == []
        else:
            assert {r["id"] for r in helper} == {r["id"] for r in plain}, (words, filter_)
            assert plain or caller in ("anon", "mallory")  # not vacuous


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_full_text_helper_reads_the_role_not_forged_claims(conn, world, role):
    """Claims saying service_role do not widen the helper for an anon or user role."""
    with conn.transaction(force_rollback=True):
        conn.execute("select set_config('request.jwt.claims', %s, true)",
                     ('{"role": "service_role"}',))
        conn.execute(f"set local role {role}")
        rows = conn.execute(FULL_TEXT_MATCHES, ("handbook", "{}")).fetchall()
        public = conn.execute("select count(*) as n from public.document_chunks c"
                              " join public.documents d on d.id = c.document_id"
                              " where d.visibility = 'public'").fetchone()["n"]
    assert len(rows) == public == 1


def test_match_documents_filter_and_threshold(conn, world):
    conn.execute(
        "update public.documents set metadata = %s where id = %s",
        ('{"lang": "en", "kind": "faq"}', world.docs["alice_team"]),
    )
    conn.commit()
    rows = run_as(conn, world, "alice",
                  "select document_id from public.match_documents(%s::extensions.vector, 10, %s)",
                  (unit_vector(0), '{"kind": "faq"}'))
    assert names(world, {r["document_id"] for r in rows}) == {"alice_team"}
    # Team mate sees it through the filter too; bob does not.
    rows = run_as(conn, world, "bob",
                  "select document_id from public.match_documents(%s::extensions.vector, 10, %s)",
                  (unit_vector(0), '{"kind": "faq"}'))
    assert rows == []
    # alice_private has vector e0: the only one with similarity 1.
    rows = run_as(conn, world, "alice",
                  "select document_id, similarity from public.match_documents("
                  "%s::extensions.vector, 10, '{}', 0.5)", (unit_vector(0),))
    assert names(world, {r["document_id"] for r in rows}) == {"alice_private"}
    assert rows[0]["similarity"] == pytest.approx(1.0)


def test_model_filter_never_mixes_models(conn, world):
    rows = run_as(conn, world, "service",
                  "select count(*) as n from public.match_documents("
                  "%s::extensions.vector, 10, '{}', null, 'another-model')", (unit_vector(0),))
    assert rows[0]["n"] == 0


# -- writes -----------------------------------------------------------------------------


def insert_doc(conn, world, caller, *, owner: str, team: str | None, visibility="private"):
    return write_as(
        conn, world, caller,
        "insert into public.documents (owner_id, team, visibility, title, content)"
        " values (%s, %s, %s, 't', 'c')",
        (world.users[owner].id, team, visibility),
    )


def test_owner_inserts_own_document(conn, world):
    assert insert_doc(conn, world, "alice", owner="alice", team="a", visibility="team") == 1


def test_owner_id_defaults_to_caller(conn, world):
    with conn.transaction(force_rollback=True):
        set_request_context(conn, claims_of(world, "bob"))
        row = conn.execute(
            "insert into public.documents (title, content) values ('t', 'c') returning owner_id"
        ).fetchone()
    assert row["owner_id"] == world.users["bob"].id


@pytest.mark.parametrize(
    ("caller", "owner", "team"),
    [
        ("alice", "bob", None),      # someone else's row
        ("alice", "alice", "b"),     # a team that is not hers
        ("mallory", "mallory", "a"), # team claimed only in user_metadata
    ],
)
def test_insert_refused_by_policy(conn, world, caller, owner, team):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        insert_doc(conn, world, caller, owner=owner, team=team)


def test_anon_cannot_insert(conn, world):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        insert_doc(conn, world, "anon", owner="alice", team=None)


def test_service_role_inserts_for_anyone(conn, world):
    assert insert_doc(conn, world, "service", owner="bob", team="b") == 1


@pytest.mark.parametrize(
    ("caller", "doc", "expected"),
    [
        ("alice", "alice_private", 1),
        ("bob", "alice_public", 0),   # readable, yet not his to change
        ("carol", "alice_team", 0),   # team mates read, they do not write
        ("mallory", "alice_team", 0),
        ("service", "bob_private", 1),
    ],
)
def test_update_only_own(conn, world, caller, doc, expected):
    changed = write_as(conn, world, caller,
                       "update public.documents set title = 'x' where id = %s",
                       (world.docs[doc],))
    assert changed == expected


@pytest.mark.parametrize(
    ("caller", "doc", "expected"),
    [
        ("alice", "alice_team", 1),
        ("bob", "alice_public", 0),
        ("carol", "alice_team", 0),
        ("service", "alice_private", 1),
    ],
)
def test_delete_only_own(conn, world, caller, doc, expected):
    deleted = write_as(conn, world, caller, "delete from public.documents where id = %s",
                       (world.docs[doc],))
    assert deleted == expected


def test_owner_cannot_move_document_to_other_team_or_owner(conn, world):
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        write_as(conn, world, "alice", "update public.documents set team = 'b' where id = %s",
                 (world.docs["alice_team"],))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        write_as(conn, world, "alice", "update public.documents set owner_id = %s where id = %s",
                 (world.users["bob"].id, world.docs["alice_team"]))


@pytest.mark.parametrize("column", ["embedding_status", "content_version", "embedding_model"])
def test_users_cannot_write_status_columns(conn, world, column):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        write_as(conn, world, "alice",
                 f"update public.documents set {column} = default where id = %s",
                 (world.docs["alice_private"],))


@pytest.mark.parametrize("caller", ["anon", "alice", "bob"])
@pytest.mark.parametrize(
    "sql",
    [
        "insert into public.document_chunks (document_id, chunk_index, content, content_hash)"
        " values (%(doc)s, 9, 'x', 'h')",
        "update public.document_chunks set content = 'x' where document_id = %(doc)s",
        "delete from public.document_chunks where document_id = %(doc)s",
    ],
)
def test_only_the_worker_writes_chunks(conn, world, caller, sql):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        write_as(conn, world, caller, sql, {"doc": world.docs["alice_private"]})


def test_service_role_writes_chunks(conn, world):
    assert write_as(conn, world, "service",
                    "delete from public.document_chunks where document_id = %s",
                    (world.docs["alice_private"],)) == 1


# -- a property: nothing readable that the rules forbid ---------------------------------

visibility = st.sampled_from(["private", "team", "public"])
teams = st.sampled_from(["a", "b", "c"])
doc_spec = st.tuples(st.integers(0, 3), teams, visibility)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(doc_spec, min_size=1, max_size=12), caller=st.integers(0, 4))
def test_reads_equal_the_rules(conn, world, specs, caller):
    """For random corpora, every read path returns exactly what the rules allow.

    Users 0-3 are alice, carol, bob, mallory; 4 is anon.
    """
    people = ["alice", "carol", "bob", "mallory"]
    team_of = {"alice": "a", "carol": "a", "bob": "b", "mallory": None}
    with conn.transaction(force_rollback=True):
        conn.execute("delete from public.documents")
        allowed = set()
        document_of = {}
        for i, (owner_ix, team, vis) in enumerate(specs):
            owner = people[owner_ix]
            doc_id = conn.execute(
                "insert into public.documents (owner_id, team, visibility, content)"
                " values (%s, %s, %s, 'shared words') returning id",
                (world.users[owner].id, team, vis),
            ).fetchone()["id"]
            chunk_id = conn.execute(
                "insert into public.document_chunks (document_id, chunk_index, content,"
                " embedding, embedding_model, content_hash) values (%s, 0, 'shared words', %s,"
                " 'm', 'h') returning id", (doc_id, unit_vector(i)),
            ).fetchone()["id"]
            document_of[chunk_id] = doc_id
            who = people[caller] if caller < 4 else None
            if (vis == "public" or (who is not None and (
                    owner == who or (vis == "team" and team_of[who] == team)))):
                allowed.add(doc_id)
        who_name = people[caller] if caller < 4 else "anon"
        with conn.transaction(force_rollback=True):
            set_request_context(conn, claims_of(world, who_name))
            docs = {r["id"] for r in conn.execute("select id from public.documents")}
            chunks = {r["document_id"] for r in
                      conn.execute("select document_id from public.document_chunks")}
            matched = {r["document_id"] for r in conn.execute(
                "select document_id from public.match_documents(%s::extensions.vector, 100)",
                (unit_vector(0),))}
            hybrid = {r["document_id"] for r in conn.execute(
                "select document_id"
                " from public.hybrid_search('shared', %s::extensions.vector, 100)",
                (unit_vector(0),))}
            # hybrid_search's full-text helper applies the read rule itself
            # (security definer): it must agree with the policies exactly.
            helper = {document_of[r["id"]] for r in conn.execute(
                "select id from suparag_search.full_text_matches("
                "websearch_to_tsquery('english', 'shared'), 100)")}
            # Without the (approximate) HNSW index the function must return
            # every readable row: the exact form of the same rule.
            conn.execute("set local enable_indexscan = off")
            matched_exact = {r["document_id"] for r in conn.execute(
                "select document_id from public.match_documents(%s::extensions.vector, 100)",
                (unit_vector(0),))}
    assert docs == allowed
    assert chunks == allowed
    assert matched_exact == allowed
    # HNSW may miss rows (these test vectors all tie), never add a forbidden one.
    assert matched <= allowed
    # The full-text half is exact and every chunk matches 'shared'.
    assert hybrid == allowed
    assert helper == allowed


def test_all_documents_covered():
    # The matrix above names every document kind; keep READABLE honest.
    for readable in READABLE.values():
        assert readable <= set(DOCS)
