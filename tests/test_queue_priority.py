"""Interactive edits ahead of bulk work (issue 16, migrations 20261202080000, 20261202120000).

A job's priority is decided by how it was queued: a transaction that queued one
document is interactive (0); one that queued several (in one statement or in
many), or a transaction with `suparag.bulk = on` (`suparag ingest`), is bulk
(1). The claim takes interactive jobs first.
"""

from __future__ import annotations

from conftest import claims_of

from worker import ingest as ingest_mod
from worker.db import set_request_context


def priorities(conn) -> dict[object, int]:
    return {r["document_id"]: r["priority"] for r in conn.execute(
        "select document_id, priority from suparag_private.embedding_jobs")}


def insert_many(conn, world, n: int, *, owner="alice") -> list[object]:
    rows = conn.execute(
        "insert into public.documents (owner_id, title, content)"
        " select %s, 'bulk ' || i, 'text ' || i from generate_series(1, %s) i returning id",
        (world.users[owner].id, n)).fetchall()
    conn.commit()
    return [r["id"] for r in rows]


def insert_one(conn, world, content="one", *, owner="alice"):
    row = conn.execute(
        "insert into public.documents (owner_id, title, content) values (%s, 't', %s)"
        " returning id", (world.users[owner].id, content)).fetchone()
    conn.commit()
    return row["id"]


def claim(conn, n: int) -> list[object]:
    with conn.transaction():
        return [r["document_id"] for r in conn.execute(
            "select * from suparag_private.claim_embedding_jobs('w', %s, 60)", (n,))]


def test_a_single_insert_is_interactive_and_a_multi_row_insert_bulk(conn, world):
    conn.execute("delete from suparag_private.embedding_jobs")
    one = insert_one(conn, world)
    many = insert_many(conn, world, 3)
    assert priorities(conn) == {one: 0, **{d: 1 for d in many}}


def test_a_users_multi_row_insert_is_bulk(conn, world):
    """The statement trigger writes the private queue for a user who may not."""
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    with conn.transaction():
        set_request_context(conn, claims_of(world, "bob"))
        ids = [r["id"] for r in conn.execute(
            "insert into public.documents (title, content) values ('a', 'x'), ('b', 'y')"
            " returning id")]
    assert priorities(conn) == {d: 1 for d in ids}


def test_a_transaction_queuing_documents_one_statement_at_a_time_is_bulk(conn, world):
    """An import that inserts row by row (executemany, an ORM loop) is bulk, its first
    document too; the next transaction's single edit is interactive again."""
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()
    with conn.transaction():
        set_request_context(conn, claims_of(world, "bob"))  # as a user, RLS on
        with conn.cursor() as cur:
            cur.executemany("insert into public.documents (title, content) values (%s, %s)"
                            " returning id", [(f"t{i}", f"text {i}") for i in range(4)],
                            returning=True)
            ids = []
            while True:
                ids.append(cur.fetchone()["id"])
                if not cur.nextset():
                    break
    assert priorities(conn) == {d: 1 for d in ids}
    edit = insert_one(conn, world, "a user's own edit")
    assert priorities(conn)[edit] == 0


def test_an_edit_of_a_document_waiting_in_a_backlog_becomes_interactive(conn, world):
    many = insert_many(conn, world, 5)
    conn.execute("update public.documents set content = 'edited' where id = %s", (many[2],))
    conn.commit()
    assert priorities(conn)[many[2]] == 0
    # A multi-row text change is bulk again; a multi-row metadata change queues nothing
    # and leaves the interactive job alone.
    conn.execute("update public.documents set metadata = '{\"k\": 1}' where id = any(%s)",
                 (many,))
    conn.commit()
    assert priorities(conn)[many[2]] == 0
    conn.execute("update public.documents set content = content || '!' where id = any(%s)",
                 (many[:3],))
    conn.commit()
    assert [priorities(conn)[d] for d in many] == [1, 1, 1, 1, 1]


def test_a_session_marked_bulk_queues_bulk_jobs(conn, world):
    conn.execute("select set_config('suparag.bulk', 'on', true)")
    doc = insert_one(conn, world)  # one row, but the transaction said bulk
    assert priorities(conn)[doc] == 1
    later = insert_one(conn, world)
    assert priorities(conn)[later] == 0  # the setting ended with its transaction


def test_ingest_queues_bulk_jobs(conn, world, tmp_path):
    (tmp_path / "only.md").write_text("# One file\n\nstill an import\n")
    target = ingest_mod.make_target(conn, owner="alice@example.com")
    report = ingest_mod.ingest(conn, ingest_mod.discover([tmp_path]), target)
    ids = [w.id for w in report.documents]
    assert len(ids) == 1
    assert priorities(conn)[ids[0]] == 1


def test_a_single_edit_is_claimed_before_a_queued_bulk_backlog(conn, world):
    conn.execute("delete from suparag_private.embedding_jobs")
    backlog = insert_many(conn, world, 200)
    edit = insert_one(conn, world, "typed by a user just now")
    first = claim(conn, 1)
    assert first == [edit]
    # Then the backlog, oldest first.
    assert set(claim(conn, 3)) == set(backlog[:3])
