"""`suparag --help` lists every command without importing the runtime, and every
command still loads and explains itself (issue 16: fast commands)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.main import _COMMANDS, app

runner = CliRunner()


def test_root_help_lists_every_command_without_importing_the_runtime():
    probe = (
        "import sys\n"
        "from cli.main import main\n"
        "sys.argv = ['suparag', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('psycopg', 'torch', 'sentence_transformers', 'worker.db',\n"
        "         'worker.devstack.stack', 'rich.markdown')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert "HEAVY []" in result.stdout, result.stdout
    for name in (*_COMMANDS, "init"):
        assert f"\n  {name} " in result.stdout, name


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_each_command_loads_and_shows_its_own_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: suparag {name}" in " ".join(result.output.split())


def test_a_command_runs_through_the_lazy_group(tmp_path):
    # `init` is defined in main; `db` is loaded on demand and must parse its options.
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "supabase" / "migrations").is_dir()
    result = runner.invoke(app, ["db", "nosuch"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_an_unknown_command_is_a_usage_error():
    result = runner.invoke(app, ["nosuch"])
    assert result.exit_code == 2
    assert "No such command 'nosuch'" in result.output
