"""docs/testing.md (and every page that names a test) names tests that exist: a renamed or
removed test must take its row with it, or the promise it held shows as proven when it is not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMED = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_every_test_a_page_names_exists() -> None:
    missing: list[str] = []
    found: dict[Path, set[str]] = {}
    named = 0
    for page in _pages():
        for module, name in NAMED.findall(page.read_text()):
            named += 1
            path = ROOT / module
            if path not in found:
                found[path] = _tests_in(path) if path.is_file() else set()
            if name not in found[path]:
                missing.append(f"{page.relative_to(ROOT)}: {module}::{name}")
    assert named > 100, "the pages name the tests that prove their promises"
    assert not missing, "\n".join(missing)


def test_the_testing_page_lists_every_gap_it_marks() -> None:
    text = (ROOT / "docs" / "testing.md").read_text()
    marked = [
        line for line in text.splitlines() if line.startswith("|") and "**no test yet**" in line
    ]
    gaps = text.split("## Promises without a test", 1)[1]
    listed = re.findall(r"^\d+\. ", gaps, flags=re.MULTILINE)
    assert len(listed) == len(marked), (len(listed), marked)
