"""supabase-js typed from suparag's schema, as a TypeScript app has it: the Supabase CLI
(tests/supabase-cli) generates the types from a migrated database (`supabase gen types
typescript --remote=<url>`, no Docker with CLI 3), tsc --strict (tests/js) compiles
tests/js/typed_search.ts against them, refusing wrong names and arguments, and the
compiled script searches through the API as anon, another team's user and the owner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from test_supabase_cli import SupabaseCli, printed_url
from test_supabase_js import (  # noqa: F401  (api and users are fixtures)
    JS,
    PASSWORD,
    Script,
    api,
    node_command,
    users,
)

from worker.jobs.embedding import EmbeddingWorker
from worker.project import init_project

WAIT = 120

DOCUMENTS = [  # (owner, visibility, title, content)
    ("alice", "private", "alice private", "Notes for the review of the on-call rota."),
    ("alice", "team", "alice team", "The red database restarts every Tuesday at noon."),
    ("alice", "public", "alice public", "The office is closed on public holidays."),
]


def generated_types(tmp_path: Path, pg_server, db_url: str) -> str:
    """`supabase gen types typescript` for db_url's database, in a project `suparag init`
    wrote."""
    project = tmp_path / "project"
    init_project(project)
    url = printed_url(pg_server, db_url.rpartition("/")[2].partition("?")[0])
    done = SupabaseCli(project)("gen", "types", "typescript", f"--remote={url}")
    return done.stdout


def compiled(tmp_path: Path, types: str) -> Path:
    """typed_search.ts and the types compiled by tsc --strict; the script's output."""
    source = tmp_path / "ts"
    source.mkdir()
    (source / "database.types.ts").write_text(types)
    shutil.copyfile(JS / "typed_search.ts", source / "typed_search.ts")
    (source / "node_modules").symlink_to(JS / "node_modules")
    (source / "package.json").write_text('{"type": "module"}\n')
    (source / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "target": "es2022", "module": "nodenext",
                            "moduleResolution": "nodenext", "outDir": "out",
                            "types": ["node"], "skipLibCheck": True},
        "files": ["typed_search.ts"]}))
    tsc = JS / "node_modules" / ".bin" / "tsc"
    done = subprocess.run([str(tsc), "-p", str(source)], cwd=source, capture_output=True,
                          text=True, timeout=WAIT)
    assert done.returncode == 0, f"tsc:\n{done.stdout}{done.stderr}"
    return source / "out" / "typed_search.js"


def test_typed_supabase_js_compiles_against_the_generated_types_and_searches_under_rls(
        tmp_path, pg_server, api, conn, users, embedder, db_url):  # noqa: F811
    command = node_command()  # installs tests/js (supabase-js, typescript) when missing
    for owner, visibility, title, content in DOCUMENTS:
        conn.execute("insert into public.documents (owner_id, team, visibility, title, content)"
                     " values (%s, 'a', %s, %s, %s)",
                     (users[owner].id, visibility, title, content))
    conn.commit()
    assert EmbeddingWorker(db_url, embedder).drain().embedded == len(DOCUMENTS)

    types = generated_types(tmp_path, pg_server, db_url)
    assert "match_documents" in types and "hybrid_search" in types
    assert "embedding_jobs" not in types  # suparag_private is not an API schema
    script_path = compiled(tmp_path, types)

    env = {**os.environ, "SUPABASE_URL": api.url, "SUPABASE_ANON_KEY": api.keys.anon_key,
           "PASSWORD": PASSWORD}
    script = Script([*command, str(script_path)], env)
    try:
        reads = script.next("reads")["reads"]
        assert script.process.wait(timeout=WAIT) == 0, script.process.communicate()[1]
    finally:
        script.close()

    readable = {"anon": {"alice public"}, "bob": {"alice public"},
                "alice": {"alice private", "alice team", "alice public"}}
    for caller, titles in readable.items():
        got = reads[caller]
        assert set(got["documents"]) == titles, caller
        assert got["match"] and set(got["match"]) <= titles, caller
        assert got["hybrid"] and set(got["hybrid"]) <= titles, caller
        assert got["similarity_is_number"], caller
    # The owner's best match for the question is her team note, found through the types.
    assert reads["alice"]["match"][0] == "alice team"
