"""Migrations: apply from nothing, idempotent push, history the Supabase CLI reads,
all-or-nothing failure, and landed migrations frozen by hash."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from worker import schema
from worker.db import connect
from worker.errors import MigrationFailed
from worker.schema import migrations_dir

# Landed migrations are history: never edit one, add a new file instead.
# When you add a migration, append its hash here in the same commit.
LANDED = {
    "20261121000000_suparag_documents.sql":
        "324389cfc6f378643000e54b4f31babd8d2ba489630b620b9d40785783c0c874",
    "20261121000100_suparag_embedding_queue.sql":
        "14f4177c6fb3c978a7ccb1049e9f3bb7be760bed10f4214967931b58a737f4aa",
    "20261121000200_suparag_search.sql":
        "df94ec66fdf688be8f6e60af9392c98587cca71374bbcedab7d30fad9cac31a4",
    "20261121000300_suparag_embedding_claims.sql":
        "fa5bd41fc7ac16d493e6479311c773212a140a8b4af74b517d722a02536e89bd",
    "20261121000400_suparag_document_source.sql":
        "1dbf94396a7659d136bd3ad9b4d87232e435baad650f1f8de68a897fa96173f1",
    "20261121000500_suparag_questions.sql":
        "f1d349933d484bb04c45429bef7f2bbaf6703d334950528729ce21b91896aec6",
    "20261121000600_suparag_realtime_jobs.sql":
        "8cedaa97d9eaeb4b1a5cee4bcd8dd3d58129def9c4496e7606739c4d42b07d18",
    "20261121000700_suparag_hybrid_full_text.sql":
        "3a2199399173964db05745867837f9dc3b48723006c9dcf4e7531f9ece26f14e",
    "20261202000000_suparag_documents_team_default.sql":
        "e578c94b9b6beb93a4dce9769187921bf6a52af11b5dbaf494b6ed6b18e3e531",
    "20261202010000_suparag_match_langchain.sql":
        "caf71738e567aeeb1606c8990c10b9c11b2d446a58d755332d925319e2e111c3",
    "20261202040000_suparag_answer_broadcast.sql":
        "bcd29128472c1bdfe03ac80c7fee0e517cd5c86b277dc12a044099da5ee1e842",
    "20261202030000_suparag_wake_secret.sql":
        "03aa5b90734081278b32d8c8a5c89e89f6c277c239cb7791cda753d237b062c8",
    "20261202070000_suparag_chunk_pages.sql":
        "780e48e93b086f1e9d29ca3de73945959d49adb58875a1a24ad585baf277f66d",
    "20261202100000_suparag_worker_role.sql":
        "b679dca961c4ec917835d95ddd3e94197915b70a0b2f49252d3f8b67a8af6897",
    "20261202060000_suparag_eval_runs.sql":
        "e75fcf02a03c56bb5640f12989617b4aa86733639905ca13d2f3795d4ab8e9e2",
    "20261202050000_suparag_embedding_spaces.sql":
        "a13d7a42bc8463adb8620923d5e6e301f4b54ac2c58ad20b3c5f56fd1314184e",
    "20261202080000_suparag_queue_priority.sql":
        "aeae69043d65f0c76d814ad14daf9ec784ba1741798f21e3dd6bd92ba2362f56",
    "20261202090000_suparag_spaces_rls.sql":
        "73ede1e4cdce6263c07224b159a42a9b6b19d8c464f9c13faf744fcb93c9b7fb",
    "20261202110000_suparag_search_scaling.sql":
        "734f2ee9a239de2448ed5b4fb700a5ad4919e6c2e43cf81a57101f957bb5d2f4",
    "20261202120000_suparag_queue_priority_per_transaction.sql":
        "b0713d695f8cce168c55d7091c405f86ba3478ddaf37e91df85b4ba3fd888d4e",
    "20261203000000_suparag_drop_column_space.sql":
        "d68d11ee9ea1c331d6f6640d21a664f3e45617cd7b92599584857e97e4a53211",
    "20261203010000_suparag_narrow_reader.sql":
        "4eea14386d57938fe2844fd972377cd7eb5bdbf4c90e97030d16574696d856e2",
    "20261204000000_suparag_policy_checks_per_candidate.sql":
        "24e76d8a61fa94b7e35bca4c2889757cc474eb6b033c293c99807058eb0e1917",
}


def test_landed_migrations_are_unchanged():
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
             for p in migrations_dir().glob("*.sql")}
    assert set(files) == set(LANDED), "add new migrations (with their hash) to LANDED"
    changed = [name for name, digest in LANDED.items() if files[name] != digest]
    assert changed == [], f"landed migrations were edited: {changed}; add a new migration instead"


def test_push_from_nothing_then_noop(empty_db_url):
    with connect(empty_db_url, autocommit=True) as conn:
        schema.apply_standin(conn)
        applied = schema.push(conn)
        assert [m.path.name for m in applied] == sorted(LANDED)
        assert schema.push(conn) == []
        history = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version").fetchall()
        state = schema.state(conn)
    assert [(h["version"], h["name"]) for h in history] == [
        (m.version, m.name) for m in schema.discover()]
    assert history[0]["statements"] == [schema.discover()[0].sql]
    assert state.pending == [] and state.unknown == []


def test_standin_is_idempotent(db_url):
    with connect(db_url, autocommit=True) as conn:
        schema.apply_standin(conn)
        schema.apply_standin(conn)
        assert schema.push(conn) == []


def test_status_before_push(empty_db_url):
    with connect(empty_db_url) as conn:
        state = schema.state(conn)
    assert state.applied == [] and len(state.pending) == len(LANDED)


def test_unknown_applied_versions_are_reported(db_url):
    with connect(db_url, autocommit=True) as conn:
        conn.execute("insert into supabase_migrations.schema_migrations (version, name)"
                     " values ('29991231000000', 'from_the_future')")
        assert schema.state(conn).unknown == ["29991231000000"]


def test_failed_push_leaves_nothing(empty_db_url, tmp_path):
    (tmp_path / "20260101000000_good.sql").write_text("create table public.good (id int);")
    (tmp_path / "20260101000100_bad.sql").write_text("create table public.bad (id nosuchtype);")
    with connect(empty_db_url, autocommit=True) as conn:
        with pytest.raises(MigrationFailed, match=r"20260101000100_bad\.sql"):
            schema.push(conn, tmp_path)
        assert conn.execute("select to_regclass('public.good') as t").fetchone()["t"] is None
        recorded = conn.execute(
            "select to_regclass('supabase_migrations.schema_migrations') as t").fetchone()["t"]
        if recorded is not None:
            count = conn.execute(
                "select count(*) as n from supabase_migrations.schema_migrations").fetchone()
            assert count["n"] == 0


def test_misnamed_migration_is_refused(tmp_path):
    (tmp_path / "add_table.sql").write_text("select 1;")
    with pytest.raises(MigrationFailed, match="YYYYMMDDHHMMSS"):
        schema.discover(tmp_path)


@pytest.mark.parametrize("statement", [
    "commit;", "rollback;", "begin;", "start transaction;", "end;", "savepoint s;",
    "release savepoint s;", "COMMIT ;",
])
def test_transaction_control_in_a_migration_is_refused(empty_db_url, tmp_path, statement):
    """A `commit;` mid-push would end the push's transaction (and its lock) early."""
    (tmp_path / "20260101000000_first.sql").write_text("create table public.first (id int);")
    (tmp_path / "20260101000100_sneaky.sql").write_text(
        f"create table public.a (id int);\n-- a comment; then\n{statement}\n"
        "create table public.b (id int);\n")
    with connect(empty_db_url, autocommit=True) as conn:
        with pytest.raises(MigrationFailed, match=r"20260101000100_sneaky\.sql, line 3: .* "
                           r"controls the transaction"):
            schema.push(conn, tmp_path)
        # Refused before anything ran: not even the earlier migration is applied.
        assert conn.execute("select to_regclass('public.first') as t").fetchone()["t"] is None


def test_whole_file_transaction_wrapper_runs_inside_the_push(empty_db_url, tmp_path):
    """begin; ... commit; around a whole file runs as part of the push's one transaction,
    so a later failing migration still leaves nothing (as 20261121000700 is written)."""
    (tmp_path / "20260101000000_wrapped.sql").write_text(
        "-- header\nbegin;\ncreate table public.wrapped (id int);\n"
        "create function public.f() returns int language plpgsql as $$\n"
        "begin\n  return 1;\nend\n$$;\ncommit;\n")
    (tmp_path / "20260101000100_bad.sql").write_text("create table public.bad (id nosuchtype);")
    with connect(empty_db_url, autocommit=True) as conn:
        with pytest.raises(MigrationFailed, match="20260101000100_bad"):
            schema.push(conn, tmp_path)
        assert conn.execute("select to_regclass('public.wrapped') as t").fetchone()["t"] is None
        (tmp_path / "20260101000100_bad.sql").unlink()
        assert [m.name for m in schema.push(conn, tmp_path)] == ["wrapped"]
        assert conn.execute("select public.f() as one").fetchone()["one"] == 1


def test_semicolons_inside_bodies_strings_and_comments_are_not_statements():
    sql = ("create function a() returns int language sql begin atomic select 1; end;\n"
           "do $x$ begin perform 1; end $x$;\n"
           "select 'commit; rollback;' as s; -- commit;\n/* begin; */ select 2;\n")
    assert schema.checked_body(sql, "x.sql") == sql


def test_wheel_ships_the_sql(tmp_path):
    """`pip install suparag` must carry the migrations, config and stand-in."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), str(root)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("suparag-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in LANDED:
        assert f"worker/_data/migrations/{name}" in names
    assert "worker/_data/sql/supabase_standin.sql" in names
    assert "worker/_data/config.toml" in names
    assert "cli/main.py" in names

