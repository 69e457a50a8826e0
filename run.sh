#!/usr/bin/env bash
# The two commands of the README, each doing its own set-up on a fresh machine:
#   bash run.sh demo   `suparag demo`: local stack, sample corpus, embeddings, search as each user
#   bash run.sh test   run the test suite against real parts (PostgreSQL 18), then its
#                      SQL-heavy modules on PostgreSQL 16; with pytest arguments, only
#                      pytest with those (SUPARAG_TEST_POSTGRES=16 for the older server)
# Set-up: a virtualenv in .venv (or $SUPARAG_VENV) with suparag and its test tools,
# reinstalled when pyproject.toml changes. Needs python3 (>= 3.11) and pip; the tests
# also need Node >= 20 with npm (supabase-js, pinned in tests/js/package-lock.json,
# and the Supabase CLI, pinned in tests/supabase-cli/package-lock.json, are installed
# there with `npm ci` by the tests that use them).
set -euo pipefail
cd "$(dirname "$0")"
venv="${SUPARAG_VENV:-.venv}"

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  local stamp="$venv/.suparag-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "Installing suparag into $venv ..." >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    # torch first, pinned to the CPU build: otherwise sentence-transformers
    # pulls the newest torch with several GB of CUDA packages.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,dev]"
    touch "$stamp"
  fi
}

case "${1:-}" in
  demo)
    setup
    exec "$venv/bin/suparag" demo
    ;;
  test)
    setup
    shift
    "$venv/bin/ruff" check worker cli tests bench
    "$venv/bin/mypy"
    if [ $# -gt 0 ]; then
      exec "$venv/bin/python" -m pytest "$@"
    fi
    "$venv/bin/python" -m pytest
    # The modules that exercise the SQL (migrations, RLS, search plans, the queue, answers,
    # spaces, roles) again on PostgreSQL 16 (about 2 minutes): hosted Supabase runs 15 and
    # 17, and 16 is the oldest this machine can run. Left out: what needs contrib modules
    # that build lacks (pg_stat_statements, auto_explain) and a chunking test.
    echo "The SQL-heavy modules again on PostgreSQL 16:" >&2
    SUPARAG_TEST_POSTGRES=16 exec "$venv/bin/python" -m pytest -q \
      tests/test_migrations.py tests/test_rls.py tests/test_questions_rls.py \
      tests/test_queue_sql.py tests/test_queue_triggers.py tests/test_queue_priority.py \
      tests/test_embedding_worker.py tests/test_answering.py tests/test_answer_broadcast.py \
      tests/test_spaces.py tests/test_worker_role.py tests/test_search_scaling.py \
      tests/test_documents_team.py tests/test_catalog.py tests/test_status_jobs.py \
      tests/test_api_rest.py \
      --deselect tests/test_search_scaling.py::test_candidates_are_checked_by_key_not_by_hashing_every_readable_document \
      --deselect tests/test_embedding_worker.py::test_one_megabyte_document
    ;;
  *)
    echo "usage: bash run.sh demo | test [pytest args]" >&2
    exit 2
    ;;
esac
