"""`suparag ingest`: files and folders into documents, upserted by (owner, source)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

import psycopg
import pytest
from conftest import free_port, wait_for
from test_cli import Cli

from cli.ingest import Visibility
from worker import ingest as ingest_mod
from worker.db import as_request, connect
from worker.documents import MAX_JSON_DEPTH, VISIBILITIES, parse_pairs
from worker.errors import ConfigError, NotFound, UserNotFound
from worker.jobs.embedding import EmbeddingWorker
from worker.jobs.queue import WorkerConfig
from worker.search import parse_filter
from worker.users import add_user

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")

HTML = """<!doctype html>
<html><head><title>Release   notes</title>
<style>body { color: red }</style>
<script>var secret = "do not index";</script></head>
<body><h1>Version 2</h1>
<p>Faster   search
and <b>fewer</b> bugs.</p>
<ul><li>one</li><li>two &amp; three</li></ul>
<pre>  keep
    indent</pre>
</body></html>
"""


@pytest.fixture
def people(conn):
    users = {
        "alice": add_user(conn, "alice@example.com", team="a"),
        "bob": add_user(conn, "bob@example.com", team="b"),
        "nomad": add_user(conn, "nomad@example.com"),
    }
    conn.commit()
    return users


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_corpus(root: Path) -> Path:
    kb = root / "kb"
    write(kb / "guide.md", "---\nlayout: page\n---\n\nIntro.\n\n## Getting started\n\nRun it.\n")
    write(kb / "notes.txt", "no heading here\njust notes\n")
    write(kb / "page.html", HTML)
    write(kb / "sub" / "deep.rst", "=====\nDeep\n=====\n\nDeeper\n------\n\nText.\n")
    write(kb / "README", "plain text with no extension\n")
    write(kb / "faq.json", json.dumps([
        {"id": "q1", "title": "Why?", "content": "Because.", "metadata": {"lang": "en"}},
        {"id": 2, "text": "Second answer.", "author": "ann"},
    ]))
    write(kb / "single.json", json.dumps({"title": "One", "content": "Only one.", "tags": ["x"]}))
    write(kb / "config.json", '{"name": "app", "port": 8080}')
    write(kb / "log.jsonl", '{"id": "a", "content": "first"}\n'
                            "{not json\n"
                            "\n"
                            '{"content": "third", "title": "Third"}\n'
                            '{"title": "no body"}\n')
    write(kb / "image.png", PNG)
    write(kb / ".hidden.md", "# secret\n")
    write(kb / ".git" / "config", "[core]\n")
    return kb


def run(conn, paths, owner="alice@example.com", **options):
    target_options = {k: options.pop(k) for k in ("team", "visibility", "metadata")
                      if k in options}
    target = ingest_mod.make_target(conn, owner=owner, **target_options)
    return ingest_mod.ingest(conn, ingest_mod.discover(paths), target, **options)


def documents(conn):
    rows = conn.execute("select * from public.documents order by source").fetchall()
    conn.commit()
    return {row["source"]: row for row in rows}


def jobs(conn):
    rows = conn.execute("select document_id, content_version"
                        " from suparag_private.embedding_jobs order by id").fetchall()
    conn.commit()
    return rows


def skipped(report):
    return {s.source: s.reason for s in report.skipped}


def notes(report):
    return {n.source: n.message for n in report.notes}


def test_folder_of_every_format(conn, people, tmp_path):
    kb = make_corpus(tmp_path)
    report = run(conn, [kb], metadata=["project=docs", "year=2024"])
    docs = documents(conn)

    assert set(docs) == {
        "kb/guide.md", "kb/notes.txt", "kb/page.html", "kb/sub/deep.rst", "kb/README",
        "kb/faq.json#id=q1", "kb/faq.json#id=2", "kb/single.json", "kb/config.json",
        "kb/log.jsonl#id=a", "kb/log.jsonl#line=4",
    }
    titles = {source: row["title"] for source, row in docs.items()}
    assert titles == {
        "kb/guide.md": "Getting started", "kb/notes.txt": "notes",
        "kb/page.html": "Release notes", "kb/sub/deep.rst": "Deep", "kb/README": "README",
        "kb/faq.json#id=q1": "Why?", "kb/faq.json#id=2": "faq (item 1)",
        "kb/single.json": "One", "kb/config.json": "config",
        "kb/log.jsonl#id=a": "log (line 1)", "kb/log.jsonl#line=4": "Third",
    }
    alice = people["alice"]
    assert {(r["owner_id"], r["team"], r["visibility"]) for r in docs.values()} == {
        (alice.id, "a", "private")}

    # Metadata: the run's --metadata, the record's own keys, and what ingest knows.
    assert docs["kb/guide.md"]["metadata"] == {
        "project": "docs", "year": 2024, "format": "markdown", "source": "kb/guide.md"}
    assert docs["kb/faq.json#id=q1"]["metadata"] == {
        "project": "docs", "year": 2024, "id": "q1", "lang": "en", "format": "json",
        "source": "kb/faq.json#id=q1"}
    assert docs["kb/faq.json#id=2"]["metadata"]["author"] == "ann"
    assert docs["kb/single.json"]["metadata"]["tags"] == ["x"]

    # Content: files as they are; HTML as readable text; other JSON pretty-printed.
    assert docs["kb/guide.md"]["content"] == (kb / "guide.md").read_text()
    assert docs["kb/page.html"]["content"] == (
        "# Version 2\n\nFaster search and fewer bugs.\n\n- one\n\n- two & three\n\n"
        "  keep\n    indent")
    assert docs["kb/config.json"]["content"] == '{\n  "name": "app",\n  "port": 8080\n}'
    assert docs["kb/faq.json#id=2"]["content"] == "Second answer."

    # Reported and skipped; the hidden files are simply not there.
    assert skipped(report) == {
        "kb/image.png": "binary: NUL bytes in the first 8 KB",
        "kb/log.jsonl#line=2":
            "line 2: invalid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        "kb/log.jsonl#line=5": 'line 5: not an object with "content" or "text"',
    }
    assert report.count("created") == 11 and report.queued == 11 and report.files == 10
    assert {j["document_id"] for j in jobs(conn)} == {r["id"] for r in docs.values()}


def test_reingest_after_embedding_queues_nothing_and_a_change_queues_one(
        conn, db_url, people, tmp_path, embedder):
    kb = tmp_path / "kb"
    write(kb / "a.md", "# Alpha\n\nPostgres row level security keeps tenants apart.\n")
    write(kb / "b.txt", "Vectors are compared by cosine distance.\n")
    write(kb / "c.jsonl", '{"id": 1, "content": "Jobs are claimed with skip locked."}\n')
    run(conn, [kb])

    worker = EmbeddingWorker(db_url, embedder, config=WorkerConfig(batch_size=8))
    try:
        assert worker.drain().embedded == 3
    finally:
        worker.close()
    before = documents(conn)
    assert {r["embedding_status"] for r in before.values()} == {"ready"}
    assert jobs(conn) == []
    chunks = conn.execute("select count(*) as n from public.document_chunks").fetchone()["n"]
    assert chunks == 3

    again = run(conn, [kb])
    assert [d.outcome for d in again.documents] == ["unchanged"] * 3
    assert again.queued == 0
    assert jobs(conn) == []
    assert documents(conn) == before  # not even updated_at moved

    write(kb / "b.txt", "Vectors are compared by inner product.\n")
    changed = run(conn, [kb])
    outcomes = {d.source: (d.outcome, d.queued) for d in changed.documents}
    assert outcomes == {"kb/a.md": ("unchanged", False), "kb/b.txt": ("updated", True),
                        "kb/c.jsonl#id=1": ("unchanged", False)}
    after = documents(conn)
    assert after["kb/b.txt"]["content"] == "Vectors are compared by inner product.\n"
    assert (after["kb/b.txt"]["content_version"], after["kb/b.txt"]["embedding_status"]) == \
        (2, "pending")
    assert after["kb/a.md"] == before["kb/a.md"]
    assert jobs(conn) == [{"document_id": after["kb/b.txt"]["id"], "content_version": 2}]


def test_sharing_change_updates_without_a_job(conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n\ntext\n")
    run(conn, [kb])
    conn.execute("delete from suparag_private.embedding_jobs")
    conn.commit()

    report = run(conn, [kb], visibility="team", metadata=["tier=gold"])
    assert [(d.outcome, d.queued) for d in report.documents] == [("updated", False)]
    row = documents(conn)["kb/a.md"]
    assert (row["visibility"], row["metadata"]["tier"], row["content_version"]) == \
        ("team", "gold", 1)
    assert jobs(conn) == []


def test_non_utf8_file_is_read_as_cp1252_and_reported(conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "legacy.txt", b"Caf\xe9 \x93quoted\x94 \x80 5\n")  # Windows-1252 bytes
    write(kb / "bom16.txt", "# Grüße\n\nUTF-16 with a BOM\n".encode("utf-16"))
    report = run(conn, [kb])
    docs = documents(conn)
    assert docs["kb/legacy.txt"]["content"] == "Caf\u00e9 \u201cquoted\u201d \u20ac 5\n"
    assert docs["kb/legacy.txt"]["metadata"]["encoding"] == "cp1252"
    assert notes(report) == {
        "kb/legacy.txt": "not UTF-8: read as cp1252 (if that is wrong, pass --encoding)"}
    assert docs["kb/bom16.txt"]["title"] == "Grüße"
    assert docs["kb/bom16.txt"]["metadata"]["encoding"] == "utf-16"

    # Another fallback, chosen by the caller, reads the same bytes its way.
    write(kb / "legacy.txt", "Caf\xe9\n".encode("latin-1"))
    run(conn, [kb / "legacy.txt"], fallback_encoding=ingest_mod.check_encoding("latin-1"))
    assert documents(conn)["legacy.txt"]["metadata"]["encoding"] == "iso8859-1"
    with pytest.raises(ConfigError, match="unknown encoding 'klingon'"):
        ingest_mod.check_encoding("klingon")


def test_undecodable_file_is_binary(conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "noise.txt", bytes([0x81, 0x8D, 0x8F, 0x90]) * 10)  # undefined in cp1252
    write(kb / "records.dat", b"\x01\x02\x03\xe9" * 100)  # no NUL, not UTF-8, cp1252 "text"
    write(kb / "ok.md", "# ok\n")
    report = run(conn, [kb])
    assert skipped(report)["kb/noise.txt"].startswith("binary: neither UTF-8")
    assert skipped(report)["kb/records.dat"] == \
        "binary: not UTF-8, and over 10% control characters as cp1252"
    assert set(documents(conn)) == {"kb/ok.md"}


def test_nul_bytes(conn, people, tmp_path):
    kb = tmp_path / "kb"
    body = "line of text\n" * 1000  # 13 KB, so the NUL is past the first 8 KB
    write(kb / "stray.md", (body[:10000] + "\x00" + body[10000:]).encode())
    write(kb / "early.txt", b"ab\x00cd\n")
    write(kb / "escaped.jsonl", json.dumps(
        {"id": "z", "title": "t\u0000", "content": "a\u0000b\ud800c",
         "metadata": {"k\u0000": "v\u0000"}}) + "\n")
    report = run(conn, [kb])
    docs = documents(conn)

    assert docs["kb/stray.md"]["content"] == body
    assert docs["kb/escaped.jsonl#id=z"]["content"] == "ab\ufffdc"
    assert docs["kb/escaped.jsonl#id=z"]["title"] == "t"
    assert docs["kb/escaped.jsonl#id=z"]["metadata"]["k"] == "v"
    assert notes(report) == {
        "kb/stray.md": "removed 1 NUL or invalid surrogate character(s), which PostgreSQL "
                       "text cannot store",
        "kb/escaped.jsonl#id=z": "removed 5 NUL or invalid surrogate character(s), which "
                                 "PostgreSQL text cannot store",
    }
    assert skipped(report) == {"kb/early.txt": "binary: NUL bytes in the first 8 KB"}


def test_empty_files(conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "empty.md", "")
    write(kb / "blank.txt", "\n\n  \n")
    write(kb / "empty.jsonl", "\n")
    write(kb / "empty.json", "")
    report = run(conn, [kb])
    docs = documents(conn)
    assert {s: (r["title"], r["content"]) for s, r in docs.items()} == {
        "kb/empty.md": ("empty", ""), "kb/blank.txt": ("blank", "\n\n  \n")}
    assert set(notes(report)) == {"kb/empty.md", "kb/blank.txt"}
    assert notes(report)["kb/empty.md"].startswith("empty: stored as a document with no content")
    assert skipped(report) == {"kb/empty.jsonl": "empty: no records",
                               "kb/empty.json": "empty: no JSON value"}

    # A file emptied since the last run empties its document rather than keeping stale text.
    write(kb / "doc.md", "# Doc\n\nsome text\n")
    run(conn, [kb])
    write(kb / "doc.md", "")
    report = run(conn, [kb])
    assert {d.source: d.outcome for d in report.documents}["kb/doc.md"] == "updated"
    assert documents(conn)["kb/doc.md"]["content"] == ""


def test_unreadable_and_special_files_are_reported(conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "good.md", "# Good\n")
    (kb / "dangling.md").symlink_to(tmp_path / "nowhere.md")
    os.mkfifo(kb / "pipe.txt")
    write(tmp_path / "elsewhere" / "x.md", "# X\n")
    (kb / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (kb / "alias.md").symlink_to(kb / "good.md")
    report = run(conn, [kb])
    assert skipped(report) == {
        "kb/dangling.md": "unreadable: No such file or directory (broken symlink)",
        "kb/pipe.txt": "not a regular file",
        "kb/linked/": "symlinked folder not followed; pass it as an argument to ingest it",
        "kb/good.md": "same file as kb/alias.md",
    }
    assert set(documents(conn)) == {"kb/alias.md"}


def test_one_megabyte_file_and_the_size_limit(conn, people, tmp_path):
    kb = tmp_path / "kb"
    paragraph = "Row level security decides who reads which rows of a table. " * 16 + "\n\n"
    text = "# Big\n\n" + paragraph * (1024 * 1024 // len(paragraph) + 1)
    assert len(text.encode()) > 1024 * 1024
    write(kb / "big.md", text)
    run(conn, [kb])
    stored = documents(conn)["kb/big.md"]["content"]
    assert hashlib.sha256(stored.encode()).digest() == hashlib.sha256(text.encode()).digest()

    report = run(conn, [kb], max_bytes=1024 * 1024)
    assert skipped(report)["kb/big.md"].startswith("too large: 1,0")
    assert report.documents == []


def test_sources_are_relative_to_the_arguments_parent(conn, people, tmp_path, monkeypatch):
    make_corpus(tmp_path)
    monkeypatch.chdir(tmp_path / "kb" / "sub")
    found = ingest_mod.discover([Path(".."), Path("deep.rst")])
    assert [f.source for f in found.files][:3] == ["kb/README", "kb/config.json", "kb/faq.json"]
    assert found.skipped == [ingest_mod.Skipped("deep.rst", "same file as kb/sub/deep.rst")]

    monkeypatch.chdir(tmp_path)
    assert [f.source for f in ingest_mod.discover([Path("kb/sub/deep.rst")]).files] == \
        ["deep.rst"]
    with pytest.raises(NotFound, match="no such file or folder: missing"):
        ingest_mod.discover([Path("kb"), Path("missing")])


def test_same_source_from_two_folders_is_reported(conn, people, tmp_path):
    write(tmp_path / "one" / "docs" / "a.md", "# one\n")
    write(tmp_path / "two" / "docs" / "a.md", "# two\n")
    report = run(conn, [tmp_path / "one" / "docs", tmp_path / "two" / "docs"])
    assert documents(conn)["docs/a.md"]["title"] == "one"
    assert skipped(report)["docs/a.md"].startswith(
        f"duplicate source: {tmp_path / 'one' / 'docs' / 'a.md'} already gave")


def test_batches_commit_and_wake_workers_once_each(conn, db_url, people, tmp_path):
    kb = tmp_path / "kb"
    for n in range(5):
        write(kb / f"{n}.md", f"# Doc {n}\n")
    with connect(db_url, autocommit=True) as listener:
        listener.execute("listen suparag_embedding_jobs")
        run(conn, [kb], batch_size=2)
        wakeups = list(listener.notifies(timeout=1))
    assert len(wakeups) == 3  # batches of 2, 2, 1: one transaction, one wake-up each
    assert len(documents(conn)) == 5


def rerun_until_it_waits_on_a_lock(db_url, kb):
    """Ingest kb again as alice on a thread of its own, once its upsert waits on a row
    lock; (the thread, a dict that gets its "report")."""
    result: dict[str, object] = {}

    def rerun() -> None:
        with connect(db_url) as mine:
            result["report"] = run(mine, [kb])

    thread = threading.Thread(target=rerun)
    thread.start()
    with connect(db_url, autocommit=True) as watcher:
        assert wait_for(lambda: watcher.execute(
            "select count(*) as n from pg_stat_activity"
            " where wait_event_type = 'Lock' and query like '%%insert into public.documents%%'"
        ).fetchone()["n"] == 1)
    return thread, result


def test_a_row_committed_by_another_run_while_the_upsert_waits_is_reported_unchanged(
        conn, db_url, people, tmp_path):
    # A killed run's last transaction can commit the same document after a rerun's
    # upsert took its snapshot: the upsert waits on the row, finds nothing to change
    # and returns no id. The rerun reports that row, by id, as unchanged.
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n\nSame text in both runs.\n")
    run(conn, [kb])
    row = documents(conn)["kb/a.md"]
    conn.execute("delete from public.documents where id = %s", (row["id"],))
    conn.commit()
    columns = ("id", "owner_id", "team", "visibility", "source", "title", "content", "metadata")
    with connect(db_url) as other:
        other.execute(f"insert into public.documents ({', '.join(columns)})"
                      f" values ({', '.join(['%s'] * len(columns))})",
                      [psycopg.types.json.Jsonb(row[c]) if c == "metadata" else row[c]
                       for c in columns])
        thread, result = rerun_until_it_waits_on_a_lock(db_url, kb)
        other.commit()
        thread.join(timeout=30)
    written = result["report"].documents
    assert [(w.source, w.id, w.outcome, w.queued) for w in written] == [
        ("kb/a.md", row["id"], "unchanged", False)]


def test_a_rerun_does_not_lock_documents_it_leaves_unchanged(conn, db_url, people, tmp_path):
    # ON CONFLICT DO UPDATE locks every conflicting row, updated or not: a re-run of a
    # large import would queue behind (or deadlock with) the worker's write-backs.
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n\nSame.\n")
    write(kb / "b.md", "# B\n\nBefore.\n")
    run(conn, [kb])
    write(kb / "b.md", "# B\n\nAfter.\n")
    a = documents(conn)["kb/a.md"]["id"]
    with connect(db_url) as worker, connect(db_url) as mine:
        worker.execute("select 1 from public.documents where id = %s for update", (a,))
        mine.execute("set lock_timeout = '2s'")
        mine.commit()
        report = run(mine, [kb])
    assert {w.source: w.outcome for w in report.documents} == {
        "kb/a.md": "unchanged", "kb/b.md": "updated"}


def test_an_import_chosen_as_a_deadlocks_victim_runs_its_batch_again(
        conn, db_url, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n\nOne.\n")
    write(kb / "b.md", "# B\n\nOne.\n")
    run(conn, [kb])
    ids = {source: row["id"] for source, row in documents(conn).items()}
    write(kb / "a.md", "# A\n\nTwo.\n")
    write(kb / "b.md", "# B\n\nTwo.\n")
    # PostgreSQL looks for a deadlock once, deadlock_timeout after a wait begins: the
    # import's look must come after the write-back closes the cycle, however slow the
    # machine (the test's own database: the import's connections start with it).
    database = conn.execute("select current_database() as d").fetchone()["d"]
    conn.execute(f'alter database "{database}" set deadlock_timeout = \'5s\'')
    conn.commit()
    with connect(db_url) as worker:
        # A write-back that locks b, then a: the import locks a, then waits for b.
        worker.execute("set deadlock_timeout = '20s'")  # so the import's check finds the cycle
        worker.execute("update public.documents set embedded_at = now() where id = %s",
                       (ids["kb/b.md"],))
        thread, result = rerun_until_it_waits_on_a_lock(db_url, kb)
        worker.execute("update public.documents set embedded_at = now() where id = %s",
                       (ids["kb/a.md"],))  # waits until PostgreSQL aborts the import's try
        worker.commit()
        thread.join(timeout=30)
    assert {w.source: w.outcome for w in result["report"].documents} == {
        "kb/a.md": "updated", "kb/b.md": "updated"}
    assert all(r["content"].endswith("Two.\n") for r in documents(conn).values())


def test_owner_team_and_visibility(conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n")
    run(conn, [kb], owner="bob@example.com", visibility="public")
    run(conn, [kb], owner=str(people["alice"].id), team="other")
    rows = conn.execute("select owner_id, team, visibility from public.documents"
                        " where source = 'kb/a.md' order by team").fetchall()
    assert rows == [
        {"owner_id": people["bob"].id, "team": "b", "visibility": "public"},
        {"owner_id": people["alice"].id, "team": "other", "visibility": "private"},
    ]
    with pytest.raises(ConfigError, match=re.escape("needs a team and nomad@example.com has none")):
        run(conn, [kb], owner="nomad@example.com", visibility="team")
    with pytest.raises(UserNotFound, match=re.escape("suparag users add ghost@example.com")):
        run(conn, [kb], owner="ghost@example.com")
    with pytest.raises(ConfigError, match="not key=value"):
        run(conn, [kb], metadata=["oops"])


def test_metadata_and_filter_read_pairs_alike():
    # One rule for `ingest -m` and `search --filter`, so a filter finds what was tagged;
    # jsonb refuses NaN and NUL, so both become what ingest stores: text, and text without it.
    pairs = ["year=2024", "draft=false", "ratio=NaN", "low=-Infinity", "note=a\x00b"]
    expected = {"year": 2024, "draft": False, "ratio": "NaN", "low": "-Infinity", "note": "ab"}
    assert parse_pairs(pairs, option="metadata") == parse_filter(pairs) == expected


def test_visibilities_are_written_once(conn):
    # typer needs a literal enum and the table a check constraint; both hold the same three.
    assert tuple(Visibility) == VISIBILITIES
    checks = conn.execute(
        "select pg_get_constraintdef(oid) as def from pg_constraint"
        " where conrelid = 'public.documents'::regclass and contype = 'c'"
        " and pg_get_constraintdef(oid) like '%visibility = ANY%'").fetchall()
    assert [tuple(re.findall(r"'(\w+)'::text", row["def"])) for row in checks] == [VISIBILITIES]


def test_ingested_documents_obey_rls(conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "mine.md", "# Mine\n")
    run(conn, [kb])
    alice, bob = people["alice"], people["bob"]
    with as_request(conn, bob.claims()):
        assert conn.execute("select count(*) as n from public.documents").fetchone()["n"] == 0
    with as_request(conn, alice.claims()):
        row = conn.execute("select source from public.documents").fetchone()
        assert row == {"source": "kb/mine.md"}
        # Users may set a source too; it is unique per owner.
        conn.execute("insert into public.documents (title, content, source)"
                     " values ('t', 'c', 'api/note')")
    with pytest.raises(psycopg.errors.UniqueViolation), as_request(conn, alice.claims()):
        conn.execute("insert into public.documents (title, content, source)"
                     " values ('t', 'c', 'api/note')")
    conn.rollback()
    with as_request(conn, bob.claims()):
        conn.execute("insert into public.documents (title, content, source)"
                     " values ('t', 'c', 'api/note')")


@pytest.fixture
def cli_at(tmp_path, db_url):
    """The real `suparag` binary, pointed at this test's database."""
    work = tmp_path / "cwd"
    work.mkdir()
    runner = Cli(home=tmp_path / "unused-home", port=free_port(), cwd=work)
    return lambda *args, **kw: runner(*args, "--db-url", db_url, **kw)


def test_cli_end_to_end(cli_at, conn, people, tmp_path):
    kb = make_corpus(tmp_path)
    first = json.loads(cli_at("ingest", str(kb), "--owner", "alice@example.com",
                              "--visibility", "team", "-m", "lang=en", "--json").stdout)
    assert (first["owner"], first["team"], first["visibility"]) == (
        "alice@example.com", "a", "team")
    assert (first["created"], first["updated"], first["unchanged"], first["skipped"],
            first["queued"]) == (11, 0, 0, 3, 11)
    assert {s["source"] for s in first["skipped_items"]} == {
        "kb/image.png", "kb/log.jsonl#line=2", "kb/log.jsonl#line=5"}
    docs = documents(conn)
    assert {r["visibility"] for r in docs.values()} == {"team"}
    assert {r["metadata"]["lang"] for r in docs.values()} == {"en"}

    (kb / "notes.txt").write_text("new notes\n")
    second = cli_at("ingest", str(kb), "--owner", "alice@example.com", "--visibility", "team",
                    "-m", "lang=en")
    out = second.stdout
    assert "0 created, 1 updated, 10 unchanged, 3 skipped" in out
    assert "skipped kb/image.png: binary" in out
    assert "1 documents queued for embedding" in out


def test_cli_errors_are_one_line(cli_at, conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "a.md", "# A\n")
    result = cli_at("ingest", str(kb), "--owner", "ghost@example.com", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no user 'ghost@example.com': create one with "
        "`suparag users add ghost@example.com`"]
    result = cli_at("ingest", str(kb / "nope"), "--owner", "alice@example.com", check=False)
    assert result.returncode == 1 and "no such file or folder" in result.stderr
    assert documents(conn) == {}


def nested(depth: int) -> str:
    """A record whose metadata nests arrays `depth` levels deep in all (the record is one)."""
    return '{"content": "deep", "metadata": {"a": ' + "[" * (depth - 2) + "]" * (depth - 2) + "}}"


def test_json_nested_too_deep_is_skipped_and_the_rest_ingested(conn, people, tmp_path):
    # Issue 14: 3,000 levels used to end the whole run in a RecursionError.
    kb = tmp_path / "kb"
    write(kb / "deep.json", nested(3000))
    write(kb / "over.json", nested(MAX_JSON_DEPTH + 1))
    write(kb / "limit.json", nested(MAX_JSON_DEPTH))
    write(kb / "log.jsonl", '{"content": "first"}\n' + nested(3000) + "\n"
                            + nested(MAX_JSON_DEPTH + 1) + '\n{"content": "fourth"}\n')
    write(kb / "a.md", "# A\n")
    report = run(conn, [kb])
    reason = (f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects: "
              "flatten it to ingest it")
    assert skipped(report) == {
        "kb/deep.json": reason, "kb/over.json": reason,
        "kb/log.jsonl#line=2": f"line 2: {reason}", "kb/log.jsonl#line=3": f"line 3: {reason}"}
    docs = documents(conn)
    assert set(docs) == {"kb/a.md", "kb/limit.json", "kb/log.jsonl#line=1",
                         "kb/log.jsonl#line=4"}
    assert docs["kb/limit.json"]["content"] == "deep"


def test_cli_reports_json_nested_too_deep(cli_at, conn, people, tmp_path):
    kb = tmp_path / "kb"
    write(kb / "deep.json", nested(3000))
    write(kb / "log.jsonl", nested(3000) + '\n{"content": "second"}\n')
    out = json.loads(cli_at("ingest", str(kb), "--owner", "alice@example.com", "--json").stdout)
    assert (out["created"], out["skipped"]) == (1, 2)
    assert {s["source"]: s["reason"] for s in out["skipped_items"]} == {
        "kb/deep.json": f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects: "
                        "flatten it to ingest it",
        "kb/log.jsonl#line=1": f"line 1: nested deeper than {MAX_JSON_DEPTH} levels of arrays "
                               "and objects: flatten it to ingest it"}
    assert set(documents(conn)) == {"kb/log.jsonl#line=2"}


def test_an_interrupted_ingest_is_finished_by_running_it_again(conn, people, tmp_path,
                                                               monkeypatch):
    """Cut off during its third batch (as by Ctrl-C or a kill), then run again: the
    committed batches are unchanged, the rest created, one job per document."""
    from worker.ingest import write as write_mod

    kb = tmp_path / "kb"
    for n in range(230):
        write(kb / f"{n:03}.md", f"# Doc {n}\n\nBody of document {n}.\n")
    real, batches = write_mod._write, []

    def cut_off(*args, **kwargs):
        batches.append(len(args[1]))
        if len(batches) == 3:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(write_mod, "_write", cut_off)
    with pytest.raises(KeyboardInterrupt):
        run(conn, [kb], batch_size=50)
    conn.rollback()
    assert len(documents(conn)) == 100 and len(jobs(conn)) == 100
    monkeypatch.setattr(write_mod, "_write", real)

    again = run(conn, [kb], batch_size=50)
    assert (again.count("unchanged"), again.count("created"), again.queued) == (100, 130, 130)
    assert len(documents(conn)) == 230
    assert len({j["document_id"] for j in jobs(conn)}) == len(jobs(conn)) == 230
    assert run(conn, [kb], batch_size=50).queued == 0
