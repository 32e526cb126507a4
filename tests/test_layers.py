"""The import layers of docs/architecture.md, read from the code's own imports.

Every ``import`` and ``from ... import`` is counted, also those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency, and a type-only one still couples the
layers (and is one refactor away from a real import).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each package may import only the packages listed for it (and itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "blocks": {"core"},
    "clients": {"core", "blocks"},
    "flows": {"core", "blocks", "clients"},
    "webhooks": {"core", "blocks", "clients"},
    "deployments": {"core", "blocks", "clients", "flows", "webhooks"},
    "bench": {"core", "blocks", "clients", "flows", "webhooks", "deployments"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(path: Path, name: str) -> set[str]:
    """Every project module ``path`` names in an import, resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` depends on that module; `from module import name`
            # on the module (import_graph resolves each to the longest module it names).
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {f for f in found if f.split(".")[0] in ALLOWED}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in imports_of(path, name):
            # Resolve `a.b.c` to the longest project module it names (a name inside a module
            # resolves to that module).
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                graph[name].add(".".join(parts))
    return graph


def test_the_graph_sees_the_known_imports() -> None:
    # Guards the reader itself: were it blind, every check below would pass vacuously.
    graph = import_graph()
    assert "flows.results" in graph["flows.pipelines.stages"]
    assert "core.settings" in graph["deployments.cli.main"]
    assert len(graph) > 50


def test_no_package_imports_one_above_or_beside_it() -> None:
    offenders = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        for target in targets
        if (top := target.split(".")[0]) != source.split(".")[0]
        and top not in ALLOWED[source.split(".")[0]]
    ]
    assert offenders == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_no_import_cycles_between_modules() -> None:
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_cycle_finder_finds_a_planted_cycle(
    graph: dict[str, set[str]], expected: list[str] | None
) -> None:
    assert find_cycle(graph) == expected
