"""The layers import downwards only (docs/architecture.md draws them).

    cli/, bench/           the commands and benchmarks: may import anything below
    worker/devstack/       the local stack (embedded server, local API, processes):
                           used by cli/ and bench/ only; may import the runtime
    worker/ (the rest)     the runtime: never imports the dev stack, cli or bench

Read from the source with `ast`, so imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def runtime_modules() -> list[Path]:
    return [p for p in modules_under("worker") if "devstack" not in p.parts]


def violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{p.name} imports {m}" for p in paths for m in sorted(imported_modules(p))
            if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_the_runtime_never_imports_the_dev_stack_or_the_commands():
    assert violations(runtime_modules(), ("worker.devstack", "cli", "bench")) == []


def test_the_dev_stack_never_imports_the_commands():
    assert violations(modules_under("worker/devstack"), ("cli", "bench")) == []


@pytest.mark.parametrize("folder", ["worker", "cli", "bench"])
def test_no_module_starts_code_from_a_string(folder):
    """`python -c "from cli.main import main; main()"` is an import no check sees."""
    offenders = [str(p.relative_to(ROOT)) for p in modules_under(folder)
                 if "import main; main()" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from worker.devstack import stack\n    return stack\n")
    assert violations([module], ("worker.devstack",)) != []
