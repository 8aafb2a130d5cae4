"""The package's layout holds: imports point one way (the README's Layout section), no circles, no module over
400 lines and no function over 60."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tuner"

# Lowest first; a module may import its own layer and those below it, never one above. Layers on one line
# (a tuple) are siblings: neither imports the other.
LAYERS = (
    ("core",),
    ("task",),
    ("taskref",),
    ("experiment", "tasks"),
    ("build", "measure"),
    ("evaluate",),
    ("evaluate_torch",),
    ("executors", "space", "results"),
    ("search",),
    ("api",),
    ("cli",),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def part_of(module: str) -> str | None:
    """The layout part a module belongs to: ``tuner.search.loop`` -> ``search``; None for ``tuner`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every ``tuner`` module ``path`` imports, at its top or inside a function (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuner"):
            for alias in node.names:  # `from tuner.build import quantize` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tuner")}
    return found


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {module: imports_of(path, known) - {module} for module, path in modules().items()}


def test_every_part_of_the_package_has_a_layer():
    assert {part_of(m) for m in modules()} - {None} <= set(RANK)


def test_imports_point_down_and_never_between_siblings():
    upward = []
    for module, imported in import_graph().items():
        own = part_of(module)
        if own is None:
            continue
        for target in imported:
            other = part_of(target)
            if other is None or other == own:
                continue
            if RANK[other] >= RANK[own]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_core_imports_nothing_else_of_tuner():
    graph = import_graph()
    outside = {f"{m} -> {t}" for m in graph if part_of(m) == "core" for t in graph[m] if part_of(t) != "core"}
    assert not outside


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            pytest.fail("import circle: " + " -> ".join(circle))


def test_modules_and_functions_stay_small():
    too_long = []
    for module, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """The walkers find what they look for: an upward import and a circle written for the test."""
    (tmp_path / "a.py").write_text("from tuner.search.study import run_study\nimport tuner.b\n")
    (tmp_path / "b.py").write_text("def f():\n    from tuner.a import x\n")
    known = {"tuner.a", "tuner.b", "tuner.search.study"}
    assert imports_of(tmp_path / "a.py", known) == {"tuner.search.study", "tuner.b"}
    assert imports_of(tmp_path / "b.py", known) == {"tuner.a"}
