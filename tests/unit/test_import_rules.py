"""Import rules the layout depends on, checked on the source (no import is run)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_installed_bench_package_never_imports_tests():
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in imported_modules(path)
                                                     if n == "tests" or n.startswith("tests."))
                 for path in (ROOT / "bench").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_payments_command_and_the_demo_do_not_import_each_other():
    # worker.cli.main runs the demo; the demo prints through worker.cli.output, never through worker.cli.main.
    for name in ("demo.py", "output.py"):
        assert "worker.cli.main" not in imported_modules(ROOT / "worker" / "cli" / name), name
