"""Import rules the layout depends on, checked on the source (no import is run).

Every ``import`` / ``from ... import`` of our modules counts, wherever it sits (a function-local import is an
import all the same), except those under ``if TYPE_CHECKING:`` (annotations only, never run). A package's module
importing one of its sibling or child modules is an edge to that module; importing a module does not count as
importing its parent package (Python runs the parent's ``__init__`` first, but that runs nothing of ours here).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("worker", "tasks", "celeryconfig", "flowerconfig")

#: The layers, bottom first: a module may import modules of its own layer or below, never above (the wiring and
#: the faces sit at the top). The longest matching prefix names a module's layer.
LAYERS: list[tuple[str, ...]] = [
    ("worker.config",),                                                   # settings: imports nothing of ours
    ("worker.states", "worker.catalogue", "worker.merchants", "worker.gateway", "worker.sandbox"),  # shared words
    ("worker.redis_connections", "worker.cards", "worker.archive", "worker.guard", "worker.ops.metrics",
     "worker.payments.amounts"),                                          # the money rule: checked at publish too
    ("worker.store", "worker.payments"),                                  # the ledger, the payment domain
    ("worker.ops", "worker.services", "worker.webhooks"),                 # operations, webhooks; services wired
    ("worker.broker", "worker.tasks.payments", "worker.tasks.reconciliation", "worker.tasks.webhooks",
     "worker.tasks.registry"),
    ("worker.broker.app",),                                               # the composition root: create_app
    ("worker", "worker.tasks", "worker.cli", "worker.console", "tasks", "celeryconfig", "flowerconfig"),  # faces
]
#: Names in LAYERS that stand for themselves only, not for what is under them.
EXACT = {"worker", "worker.tasks"}


def _module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in ("worker", "tasks"):
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for name in ("celeryconfig", "flowerconfig"):
        found[name] = ROOT / f"{name}.py"
    return found


MODULES = _module_files()


def _ours(name: str) -> str | None:
    """The module of ours ``name`` is (or is in: ``worker.gateway.InvalidInput`` -> ``worker.gateway``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_only(tree: ast.Module) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return ids


def imports_of(module: str) -> set[str]:
    """Our modules ``module`` imports (anywhere in it but under TYPE_CHECKING)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from worker.tasks import payments``: the submodule itself
            names.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    return {m for m in (_ours(n) for n in names) if m and m != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            under = module.startswith(prefix + ".") and prefix not in EXACT
            if (module == prefix or under) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no layer: add its wing to LAYERS"
    return rank


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    loops.append(sorted(component))
    return loops


def test_the_loop_finder_finds_a_loop_through_a_function_local_import():
    assert import_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_loops({"a": {"b"}, "b": set()}) == []


def test_there_are_no_import_loops_between_our_modules():
    assert import_loops(GRAPH) == []


@pytest.mark.parametrize("wing", ["worker.gateway", "worker.sandbox"])
def test_the_gateway_and_the_sandbox_import_nothing_of_the_rest(wing):
    outside = {m: sorted(i for i in imported if not (i == wing or i.startswith(wing + ".")))
               for m, imported in GRAPH.items() if m == wing or m.startswith(wing + ".")}
    assert {m: i for m, i in outside.items() if i} == {}


def test_config_imports_nothing_of_ours():
    assert GRAPH["worker.config"] == set()


def test_nothing_below_imports_from_above():
    upward = {m: sorted(i for i in imported if layer_of(i) > layer_of(m)) for m, imported in GRAPH.items()}
    assert {m: i for m, i in upward.items() if i} == {}


def test_the_composition_root_is_what_builds_the_app():
    # worker.app and the public task names reach the app through create_app's module, built on first use
    assert "worker.broker.app" in GRAPH["worker"] and "worker.broker.app" in GRAPH["worker.tasks"]
    assert {"worker.tasks.payments", "worker.tasks.reconciliation"} <= GRAPH["worker.broker.app"]
    assert not any(m.startswith("worker.broker.app") for m in GRAPH["worker.payments.sweep"])


def test_the_installed_bench_package_never_imports_tests():
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in _top_names(path)
                                                     if n == "tests" or n.startswith("tests."))
                 for path in (ROOT / "bench").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def _top_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_payments_command_and_the_demo_do_not_import_each_other():
    # worker.cli.main runs the demo; the demo prints through worker.cli.output, never through worker.cli.main.
    for name in ("worker.cli.demo", "worker.cli.output"):
        assert "worker.cli.main" not in GRAPH[name], name
