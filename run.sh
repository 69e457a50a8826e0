#!/usr/bin/env bash
# The two commands of the README, each doing its own set-up on a fresh machine:
#   bash run.sh demo   `suparag demo`: local stack, sample corpus, embeddings, search as each user
#   bash run.sh test   run the test suite against real parts
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
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: bash run.sh demo | test [pytest args]" >&2
    exit 2
    ;;
esac
