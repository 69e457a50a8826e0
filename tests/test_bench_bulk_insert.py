"""`suparag bench bulk-insert`, small: rows through the real local API (or `suparag ingest`),
cut off, re-run.

Asserts what the bench checks (every row inserted once across the two runs, the
re-run inserting only the missing rows, one wake-up per batch that inserted rows,
every document written back once) and the report's shape; the figures are the
bench's, not the suite's.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from bench import bulk_insert as bench_bulk
from worker.errors import BenchError
from worker.users import User, add_user


def test_small_bulk_insert_is_resumed_without_a_row_lost_or_doubled() -> None:
    result = bench_bulk.run(rows=600, batch=100, workers=1, interrupt=0.5)
    assert result["violations"] == []
    assert result["first_run"]["batches"] == 3 and result["first_run"]["inserted"] == 300
    # The re-run posts every batch again; only the three missing ones insert rows.
    assert result["second_run"]["batches"] == 6 and result["second_run"]["inserted"] == 300
    assert result["wakeups"] == 6  # one per batch that queued documents, none per row
    assert result["documents_ready"] == 600
    searches = result["searches"]
    assert searches["before"]["n"] > 0 and searches["import"]["n"] + \
        searches["embedding"]["n"] > 0
    assert all(p["failed"] == 0 for p in searches.values())
    assert sum(result["search_wait_samples"].values()) > 0
    assert result["search_lock_wait_samples"] == 0
    assert result["import_rows_per_s"] > 0


def test_an_ingest_killed_partway_is_finished_by_running_it_again() -> None:
    """--via ingest: one file per row; `suparag ingest` is killed (SIGKILL) after about a
    third of the rows are committed, then run again."""
    result = bench_bulk.run(rows=1000, workers=1, interrupt=0.3, via="ingest")
    assert result["violations"] == []  # the re-run found the committed files unchanged
    first, second = result["first_run"]["inserted"], result["second_run"]["inserted"]
    assert 300 <= first < 1000  # killed partway, after whole batches of 50
    assert first % 50 == 0
    assert second == 1000 - first
    assert result["documents_ready"] == 1000
    assert 0 < result["wakeups"] <= result["batches_posted"]  # per batch, not per row
    assert all(p["failed"] == 0 for p in result["searches"].values())
    assert result["search_lock_wait_samples"] == 0


def test_a_merging_upsert_of_documents_is_refused_for_users(conn) -> None:
    """Why the bench's script ignores duplicates: merging would update the id column,
    which users may not (the documents' column grants)."""
    alice = add_user(conn, "alice@example.com", team="a")
    conn.commit()
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)",
                     (f'{{"sub": "{alice.id}", "role": "authenticated"}}',))
        conn.execute(
            "insert into public.documents (id, title, content) values"
            " (gen_random_uuid(), 't', 'c') on conflict (id) do update"
            " set id = excluded.id, title = excluded.title, content = excluded.content")


def test_a_failed_ingest_run_reports_what_ingest_said(db_url, tmp_path) -> None:
    """The bench's error carries `suparag ingest`'s own one-line error, not just its code."""
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "000000.md").write_text("# One\n\nrow\n")
    stranger = User(uuid.uuid4(), "nobody@bench.local")
    with pytest.raises(BenchError, match=r"exited with code 1: .*nobody@bench\.local"):
        bench_bulk._ingest(db_url, folder, stranger, stop_rows=None, label="ingest")
