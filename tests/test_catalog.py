"""Catalog checks: closed by default, pinned search paths, private means private."""

from __future__ import annotations

import psycopg
import pytest

OUR_SCHEMAS = ("public", "suparag_private", "suparag_search")

# Functions allowed to run with their owner's rights, and why.
SECURITY_DEFINER_REASONS = {
    "suparag_private.enqueue_embedding":
        "a trigger that writes the private queue on behalf of users who may not",
    "suparag_private.mark_bulk_embedding_jobs":
        "a statement trigger that marks the jobs of a multi-row statement bulk in the private "
        "queue, on behalf of users who may not write it (issue 16)",
    "suparag_private.enqueue_answer":
        "a trigger that queues an answer job for a user's question; users may not write it",
    "suparag_search.full_text_matches":
        "full text through the GIN index, which RLS rules out (`@@` is not leakproof); "
        "applies the read rule itself and returns only readable ids",
    "suparag_private.publish_answer":
        "the answer worker sends on the asker's private Broadcast topic; realtime.messages "
        "is closed to the least-privilege suparag_worker role (migration 20261202100000)",
    "suparag_search.embedding_space":
        "the search functions resolve the space to search (its id, model, width) as any "
        "caller; the spaces table stays private and only these columns are revealed",
    "suparag_search.hybrid_defaults":
        "hybrid_search reads the searched space's stored default weights as any caller; "
        "the defaults table stays private and only the three weights are revealed",
    "suparag_private.asker":
        "the answer worker (suparag_worker) reads the claim columns of one auth.users row; "
        "auth.users has RLS on and belongs to Auth, so no policy of ours can let it in",
    "suparag_private.chunk_vectors_document":
        "a trigger that copies a vector's document id from its chunk whatever RLS the "
        "writer is under (the read policy asks documents through it)",
}


def test_rls_enabled_on_every_table(conn):
    rows = conn.execute(
        "select n.nspname || '.' || c.relname as name, c.relrowsecurity"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.relkind in ('r', 'p') and n.nspname = any(%s)", (list(OUR_SCHEMAS),),
    ).fetchall()
    assert {r["name"] for r in rows} >= {
        "public.documents", "public.document_chunks",
        "suparag_private.embedding_jobs", "suparag_private.settings",
    }
    assert [r["name"] for r in rows if not r["relrowsecurity"]] == []


def functions(conn, schema):
    return conn.execute(
        "select p.oid::regprocedure::text as signature, n.nspname || '.' || p.proname as name,"
        " p.prosecdef, coalesce(p.proconfig, '{}') as config"
        " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = %s and p.prokind = 'f'", (schema,),
    ).fetchall()


@pytest.mark.parametrize("schema", OUR_SCHEMAS)
def test_functions_pin_search_path(conn, schema):
    found = functions(conn, schema)
    assert found, f"no functions found in {schema}"
    unpinned = [f["signature"] for f in found if 'search_path=""' not in f["config"]]
    assert unpinned == []


@pytest.mark.parametrize("schema", OUR_SCHEMAS)
def test_security_definer_only_with_a_reason(conn, schema):
    definers = {f["name"] for f in functions(conn, schema) if f["prosecdef"]}
    assert definers <= set(SECURITY_DEFINER_REASONS)


def test_public_functions_are_invoker(conn):
    assert {f["name"] for f in functions(conn, "public")} >= {
        "public.match_documents", "public.hybrid_search"}
    assert [f["name"] for f in functions(conn, "public") if f["prosecdef"]] == []


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_private_schema_closed_to_api_roles(conn, role):
    row = conn.execute("select has_schema_privilege(%s, 'suparag_private', 'usage') as u",
                       (role,)).fetchone()
    assert row["u"] is False
    for fn in functions(conn, "suparag_private"):
        allowed = conn.execute("select has_function_privilege(%s, %s, 'execute') as x",
                               (role, fn["signature"])).fetchone()["x"]
        assert allowed is False, fn["signature"]
    tables = conn.execute(
        "select c.oid::regclass::text as t from pg_class c join pg_namespace n"
        " on n.oid = c.relnamespace where n.nspname = 'suparag_private' and c.relkind = 'r'"
    ).fetchall()
    for table in tables:
        for priv in ("select", "insert", "update", "delete"):
            held = conn.execute("select has_table_privilege(%s, %s, %s) as x",
                                (role, table["t"], priv)).fetchone()["x"]
            assert held is False, (table["t"], priv)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_private_queue_unreachable_in_practice(conn, role):
    with conn.transaction(force_rollback=True):
        conn.execute("select set_config('role', %s, true)", (role,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from suparag_private.embedding_jobs")


def test_every_public_object_is_commented(conn):
    missing = conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'public' and c.relkind = 'r'"
        " and obj_description(c.oid, 'pg_class') is null"
        " union all"
        " select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'public' and obj_description(p.oid, 'pg_proc') is null"
    ).fetchall()
    assert missing == []


def test_search_functions_use_iterative_scans(conn):
    for fn in ("match_documents",):
        config = conn.execute(
            "select proconfig from pg_proc where proname = %s", (fn,)
        ).fetchone()["proconfig"]
        assert "hnsw.iterative_scan=relaxed_order" in config


def test_standin_matches_supabase_roles(conn):
    roles = {r["rolname"]: r for r in conn.execute(
        "select rolname, rolcanlogin, rolbypassrls, rolinherit from pg_roles"
        " where rolname in ('anon', 'authenticated', 'service_role', 'authenticator')")}
    assert set(roles) == {"anon", "authenticated", "service_role", "authenticator"}
    assert roles["service_role"]["rolbypassrls"] is True
    assert not roles["anon"]["rolbypassrls"] and not roles["authenticated"]["rolbypassrls"]
    assert roles["authenticator"]["rolcanlogin"] and not roles["authenticator"]["rolinherit"]
    assert not any(roles[r]["rolcanlogin"] for r in ("anon", "authenticated", "service_role"))
    members = {r["m"] for r in conn.execute(
        "select r.rolname as m from pg_auth_members am join pg_roles r on r.oid = am.roleid"
        " join pg_roles u on u.oid = am.member where u.rolname = 'authenticator'")}
    assert members >= {"anon", "authenticated", "service_role"}


def test_auth_functions_read_request_claims(conn):
    with conn.transaction(force_rollback=True):
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            ('{"sub": "6f0c2b36-52b6-4fdc-8f7e-0d5f2d7a1c11", "role": "authenticated",'
             ' "email": "x@example.com", "app_metadata": {"team": "t"}}',),
        )
        row = conn.execute(
            "select auth.uid()::text as uid, auth.role() as role, auth.email() as email,"
            " auth.jwt() -> 'app_metadata' ->> 'team' as team").fetchone()
    assert row == {"uid": "6f0c2b36-52b6-4fdc-8f7e-0d5f2d7a1c11", "role": "authenticated",
                   "email": "x@example.com", "team": "t"}
    with conn.transaction(force_rollback=True):
        # No claims at all (anon with no token): uid is null, not an error.
        row = conn.execute("select auth.uid() as uid, auth.jwt() as jwt").fetchone()
    assert row == {"uid": None, "jwt": None}


def test_realtime_publication_exists(conn):
    assert conn.execute(
        "select count(*) as n from pg_publication where pubname = 'supabase_realtime'"
    ).fetchone()["n"] == 1


def test_vector_lives_in_extensions_schema(conn):
    row = conn.execute(
        "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace"
        " where e.extname = 'vector'").fetchone()
    assert row["nspname"] == "extensions"


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_search_schema_holds_only_the_search_helpers(conn, role):
    """API roles may use suparag_search (the search functions run as them) and it holds the
    full-text helper, the space resolver, the spaces' vectors (issue 10) and match_documents'
    plan sizing and narrow-reader check (issue 17), nothing else."""
    assert sorted(f["signature"] for f in functions(conn, "suparag_search")) == [
        "suparag_search.embedding_space(text)",
        "suparag_search.few_readable_documents(jsonb,double precision)",
        "suparag_search.full_text_matches(tsquery,integer,jsonb)",
        "suparag_search.hybrid_defaults(text)",
        "suparag_search.row_estimate(text,text)",
        "suparag_search.search_plan(integer,double precision,double precision)"]
    row = conn.execute(
        "select has_schema_privilege(%s, 'suparag_search', 'usage') as u,"
        " has_schema_privilege(%s, 'suparag_search', 'create') as c,"
        " (select array_agg(c.relname order by c.relname) from pg_class c"
        "  join pg_namespace n on n.oid = c.relnamespace"
        "  where n.nspname = 'suparag_search' and c.relkind not in ('i', 'S')) as relations,"
        " has_table_privilege(%s, 'suparag_search.chunk_vectors', 'insert') as writes",
        (role, role, role),
    ).fetchone()
    assert row == {"u": True, "c": False, "relations": ["chunk_vectors"],
                   "writes": role == "service_role"}
