"""The sample corpus and the checks behind `suparag demo`.

Three users in two teams: alice and carol in team red, bob in team blue.
alice and bob own the sample documents (worker/demo_corpus/<owner>/<visibility>/),
some private, some shared with their team, some public. carol owns nothing
and sees what team red shares plus what is public; anonymous callers see the
public documents only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from worker.db import as_request
from worker.documents import VISIBILITIES
from worker.ingest import IngestReport, discover, ingest, make_target
from worker.users import User, add_user

CORPUS = Path(__file__).parent / "demo_corpus"

#: email -> team
USERS = {"alice@example.com": "red", "carol@example.com": "red", "bob@example.com": "blue"}
OWNERS = {"alice": "alice@example.com", "bob": "bob@example.com"}

QUERIES = (
    "What do we do when the primary database goes down?",
    "How big a discount can we give Globex?",
)
#: The question the demo asks as carol and as bob (bob's private notes answer it best).
QUESTION = QUERIES[1]


@dataclass(frozen=True)
class DemoDoc:
    id: uuid.UUID
    title: str
    owner: str
    team: str | None
    visibility: str


def corpus_files() -> int:
    return sum(1 for p in CORPUS.rglob("*.md"))


def seed(conn: psycopg.Connection[Any],
         on_file: Callable[[Any], None] | None = None) -> tuple[dict[str, User], IngestReport]:
    """Create the users and ingest the corpus; running it again changes nothing."""
    users = {email: add_user(conn, email, team=team) for email, team in USERS.items()}
    conn.commit()
    total = IngestReport()
    for owner, email in OWNERS.items():
        for visibility in VISIBILITIES:
            folder = CORPUS / owner / visibility
            target = make_target(conn, owner=email, visibility=visibility,
                                 metadata=["collection=suparag-demo"])
            report = ingest(conn, discover([folder]), target, on_file=on_file)
            total.files += report.files
            total.documents.extend(report.documents)
            total.skipped.extend(report.skipped)
            total.notes.extend(report.notes)
    return users, total


def demo_documents(conn: psycopg.Connection[Any]) -> list[DemoDoc]:
    rows = conn.execute(
        "select d.id, d.title, u.email as owner, d.team, d.visibility"
        " from public.documents d join auth.users u on u.id = d.owner_id"
        " where d.metadata @> '{\"collection\": \"suparag-demo\"}' order by d.title"
    ).fetchall()
    conn.commit()
    return [DemoDoc(**row) for row in rows]


def pending(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> int:
    row = conn.execute(
        "select count(*) as n from public.documents"
        " where id = any(%s) and embedding_status <> 'ready'", (ids,)).fetchone()
    conn.commit()
    return int(row["n"]) if row else 0


def may_read(user: User | None, doc: DemoDoc) -> bool:
    """The sharing rule in plain Python, to check the database's RLS against."""
    if doc.visibility == "public":
        return True
    if user is None:
        return False
    if doc.owner == user.email:
        return True
    return doc.visibility == "team" and doc.team is not None and doc.team == user.team


def readable(conn: psycopg.Connection[Any], user: User | None) -> set[uuid.UUID]:
    """The demo documents a plain `select` returns to user (None: anon), under RLS."""
    with as_request(conn, user.claims() if user else None):
        rows = conn.execute(
            "select id from public.documents"
            " where metadata @> '{\"collection\": \"suparag-demo\"}'").fetchall()
    return {row["id"] for row in rows}
