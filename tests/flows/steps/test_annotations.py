"""Check-run annotations from the tools' own reports: real ruff, mypy and pytest output.

The reports are made by running the tools from this environment on a tiny project, so the
parsers are held to what the tools really write; the hostile cases are real files too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.config import Checks, Report, Sandbox
from flows.results import StageResult, StageStatus
from flows.steps.annotations import (
    MAX_ANNOTATIONS,
    MAX_REPORT_BYTES,
    SANDBOX_CHECKOUT,
    CheckoutPaths,
    ReportError,
    load_annotations,
    read_report,
    remove_report,
)
from flows.steps.checks import run_check
from flows.steps.sandbox.kubernetes import WORKSPACE
from flows.steps.sandbox.local import CHECKOUT

PY = sys.executable

MODULE = """\
import os


def f(x: int) -> str:
    return x


def g() -> None:
    y: int = "a"
    reveal_type(y)
"""
OTHER = """\
import not_a_module_anywhere  # noqa: F401


def h() -> int:
    return "s"
"""
HELPER = """\
def check(value):
    assert value == 2, "value is not two"
"""
TESTS = """\
import pytest

from tests.unit.helper import check


def test_ok():
    pass


def test_fail():
    x = 1
    assert x == 2


def test_helper():
    check(1)


def test_unknown_fixture(nowhere):
    pass


class TestThing:
    def test_method(self):
        raise ValueError("nope")
"""


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_project(root: Path) -> Path:
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/mod.py", MODULE)
    write(root, "pkg/other.py", OTHER)
    write(root, "tests/__init__.py", "")
    write(root, "tests/unit/__init__.py", "")
    write(root, "tests/unit/helper.py", HELPER)
    write(root, "tests/unit/test_x.py", TESTS)
    return root


def tool(root: Path, *argv: str) -> None:
    """Run a tool from this environment in ``root``; findings (2: pytest's errors) are not 0."""
    done = subprocess.run(
        [PY, "-m", *argv], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode in (0, 1, 2), done.stdout + done.stderr


@dataclass(frozen=True)
class Project:
    root: Path

    def annotations(self, fmt: str, path: str) -> list[dict[str, object]]:
        report = Report(format=fmt, path=path)  # type: ignore[arg-type]
        return [a.payload() for a in load_annotations(report, self.root)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = make_project(tmp_path_factory.mktemp("project"))
    tool(root, "ruff", "check", "--no-cache", "--output-format", "json", "--output-file",
         "ruff.json", ".")  # fmt: skip
    tool(root, "mypy", "--no-incremental", "--junit-xml", "mypy.xml", "pkg")
    tool(root, "mypy", "--no-incremental", "--junit-format", "per_file",
         "--junit-xml", "mypy-per-file.xml", "pkg")  # fmt: skip
    pytest_argv = ["pytest", "-p", "no:cacheprovider", "-q", "tests"]
    tool(root, *pytest_argv, "--junitxml", "junit.xml")
    tool(root, *pytest_argv, "--junitxml", "junit1.xml", "-o", "junit_family=xunit1")
    tool(root, *pytest_argv, "--junitxml", "junit-notb.xml", "--tb=no")
    return Project(root)


def where(annotations: list[dict[str, object]]) -> set[tuple[object, ...]]:
    return {(a["path"], a["start_line"], a.get("title")) for a in annotations}


# Formats, on the tools' real output.


def test_ruff_findings_land_on_their_file_line_and_columns(project: Project) -> None:
    found = project.annotations("ruff", "ruff.json")
    # ruff prints absolute host paths; they come back relative to the repository root.
    assert ("pkg/mod.py", 1, "F401") in where(found)
    assert ("pkg/mod.py", 10, "F821") in where(found)
    unused = next(a for a in found if a["title"] == "F401")
    # `import os`: "os" is columns 8-9 (ruff's end column 10 is one past it).
    assert (unused["start_column"], unused["end_column"]) == (8, 9)
    assert unused["message"] == "`os` imported but unused"
    assert unused["annotation_level"] == "failure"
    assert str(unused["raw_details"]).startswith("https://docs.astral.sh/ruff/rules/")


@pytest.mark.parametrize("report", ["mypy.xml", "mypy-per-file.xml"])
def test_mypy_junit_gives_one_annotation_per_error_in_both_formats(
    project: Project, report: str
) -> None:
    found = project.annotations("mypy", report)
    assert where(found) == {
        ("pkg/mod.py", 5, "mypy [return-value]"),
        ("pkg/mod.py", 9, "mypy [assignment]"),
        ("pkg/other.py", 1, "mypy [import-not-found]"),
        ("pkg/other.py", 5, "mypy [return-value]"),
    }
    # The note on the error's own line goes with it; the lone reveal_type note is no error.
    missing = next(a for a in found if a["title"] == "mypy [import-not-found]")
    assert "missing-imports" in str(missing["raw_details"])
    assert not any("Revealed type" in str(a) for a in found)


def test_pytest_junit_points_at_the_failing_line(project: Project) -> None:
    found = project.annotations("junit", "junit.xml")
    assert where(found) == {
        ("tests/unit/test_x.py", 12, "tests.unit.test_x.test_fail"),
        # The last location of the traceback: where the assertion that failed is.
        ("tests/unit/helper.py", 2, "tests.unit.test_x.test_helper"),
        # A setup error names the test by absolute host path, without a trailing colon.
        ("tests/unit/test_x.py", 19, "tests.unit.test_x.test_unknown_fixture"),
        ("tests/unit/test_x.py", 25, "tests.unit.test_x.TestThing.test_method"),
    }
    failed = next(a for a in found if a["start_line"] == 12)
    assert failed["message"] == "assert 1 == 2"
    assert "assert x == 2" in str(failed["raw_details"])


def test_pytest_junit_file_and_line_attributes_are_used_when_present(project: Project) -> None:
    found = project.annotations("junit", "junit1.xml")
    # xunit1 names the test's file; the failing line in that file beats the `def` line.
    assert ("tests/unit/test_x.py", 16, "tests.unit.test_x.test_helper") in where(found)
    assert ("tests/unit/test_x.py", 12, "tests.unit.test_x.test_fail") in where(found)


def test_pytest_junit_without_traceback_falls_back_to_the_test_module(project: Project) -> None:
    found = project.annotations("junit", "junit-notb.xml")
    assert ("tests/unit/test_x.py", 1, "tests.unit.test_x.test_fail") in where(found)
    assert ("tests/unit/test_x.py", 1, "tests.unit.test_x.TestThing.test_method") in where(found)


def test_pytest_junit_collection_error_points_at_the_broken_module(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    write(root, "pkg/broken.py", '"""Doc."""\nimport os\nfrom __future__ import annotations\n')
    write(root, "tests/unit/test_x.py", "import pkg.broken\n\n\ndef test_never():\n    pass\n")
    tool(root, "pytest", "-p", "no:cacheprovider", "-q", "tests", "--junitxml", "junit.xml")
    found = Project(root).annotations("junit", "junit.xml")
    # Python's own `File "...", line N` names the SyntaxError's line, after pytest's entries.
    assert where(found) == {("pkg/broken.py", 3, "tests.unit.test_x")}
    assert found[0]["message"] == "collection failure"


# Paths.


def test_sandbox_checkout_is_where_both_runners_mount_it() -> None:
    assert SANDBOX_CHECKOUT.as_posix() == str(CHECKOUT) == WORKSPACE


def test_paths_outside_escaping_or_missing_are_dropped(tmp_path: Path) -> None:
    root = make_project(tmp_path / "checkout")
    outside = write(tmp_path, "secret.py", "x = 1\n")
    (root / "pkg" / "link.py").symlink_to(outside)
    paths = CheckoutPaths(root)
    assert paths.relative("/workspace/pkg/mod.py") == "pkg/mod.py"
    assert paths.relative(str(root / "pkg" / "mod.py")) == "pkg/mod.py"
    assert paths.relative("./pkg/mod.py") == "pkg/mod.py"
    for raw in (
        "/etc/passwd",
        str(outside),
        "../secret.py",
        "pkg/../../secret.py",
        "/workspace/../etc/passwd",
        "pkg/missing.py",
        "pkg",
        "pkg/link.py",  # a symlink out of the checkout
        "",
    ):
        assert paths.relative(raw) is None, raw


def test_findings_on_dropped_paths_are_dropped_from_a_real_report(project: Project) -> None:
    items = json.loads((project.root / "ruff.json").read_text())
    sample = items[0]
    hostile = [
        sample,
        {**sample, "filename": "/etc/passwd"},
        {**sample, "filename": "../outside.py"},
        {**sample, "filename": "/workspace/pkg/mod.py"},
        {**sample, "filename": "pkg/nowhere.py"},
        {**sample, "location": {"row": 0, "column": 1}},
        {**sample, "location": {"row": True, "column": 1}},
        "not a finding",
    ]
    write(project.root, "hostile.json", json.dumps(hostile))
    found = project.annotations("ruff", "hostile.json")
    assert [a["path"] for a in found] == ["pkg/mod.py", "pkg/mod.py"]


# Hostile reports.


def test_a_symlinked_report_or_folder_is_refused(tmp_path: Path, project: Project) -> None:
    root = make_project(tmp_path / "checkout")
    shutil.copy(project.root / "ruff.json", tmp_path / "elsewhere.json")
    (root / "ruff.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ReportError, match="symlink"):
        read_report(root, "ruff.json")
    (tmp_path / "reports").mkdir()
    shutil.copy(project.root / "ruff.json", tmp_path / "reports" / "ruff.json")
    (root / "reports").symlink_to(tmp_path / "reports")
    with pytest.raises(ReportError, match="symlink"):
        read_report(root, "reports/ruff.json")


def test_an_oversized_report_or_a_fifo_is_refused(tmp_path: Path) -> None:
    with (tmp_path / "big.json").open("wb") as big:
        big.truncate(MAX_REPORT_BYTES + 1)
    with pytest.raises(ReportError, match="larger than 5 MiB"):
        read_report(tmp_path, "big.json")
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(ReportError, match="not a regular file"):
        read_report(tmp_path, "pipe.json")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<testsuite><testcase classname="pkg.mod" name="t">
<failure message="&lol9;">pkg/mod.py:1: x</failure></testcase></testsuite>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY leak SYSTEM "file:///etc/hostname">]>
<testsuite><testcase classname="pkg.mod" name="t"><failure message="&leak;">x</failure>
</testcase></testsuite>
"""


@pytest.mark.parametrize("xml", [BILLION_LAUGHS, EXTERNAL_ENTITY])
@pytest.mark.parametrize("fmt", ["junit", "mypy"])
def test_xml_with_entities_is_refused(tmp_path: Path, xml: str, fmt: str) -> None:
    root = make_project(tmp_path)
    write(root, "report.xml", xml)
    with pytest.raises(ReportError, match=r"refused: .*DTDs and entities are not read"):
        load_annotations(Report(format=fmt, path="report.xml"), root)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("ruff", '[{"filename": ', "not valid JSON"),
        ("ruff", '{"filename": "pkg/mod.py"}', "expected a list"),
        ("ruff", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ("junit", "<testsuite><testcase>", "not valid XML"),
        ("mypy", "", "not valid XML"),
    ],
)
def test_a_broken_report_is_a_report_error(
    tmp_path: Path, fmt: str, text: str, expected: str
) -> None:
    root = make_project(tmp_path)
    write(root, "report", text)
    with pytest.raises(ReportError, match=expected):
        load_annotations(Report(format=fmt, path="report"), root)  # type: ignore[arg-type]


def test_annotations_and_their_texts_are_capped(project: Project) -> None:
    sample = json.loads((project.root / "ruff.json").read_text())[0]
    many = [{**sample, "message": "é" * 70_000}] + [sample] * (MAX_ANNOTATIONS + 500)
    write(project.root, "many.json", json.dumps(many))
    found = project.annotations("ruff", "many.json")
    assert len(found) == MAX_ANNOTATIONS
    first = str(found[0]["message"])
    assert len(first.encode()) <= 65_535 and first.endswith("(truncated)")


def test_remove_report_deletes_a_file_or_a_symlink_but_never_follows_one(tmp_path: Path) -> None:
    root = make_project(tmp_path / "checkout")
    write(root, "reports/ruff.json", "[]")
    assert remove_report(root, "reports/ruff.json")
    assert not (root / "reports" / "ruff.json").exists()
    target = write(tmp_path, "keep.json", "[]")
    (root / "ruff.json").symlink_to(target)
    assert remove_report(root, "ruff.json")
    assert target.exists() and not (root / "ruff.json").is_symlink()
    (tmp_path / "outside").mkdir()
    kept = write(tmp_path, "outside/ruff.json", "[]")
    (root / "linked").symlink_to(tmp_path / "outside")
    assert not remove_report(root, "linked/ruff.json")
    assert kept.exists()
    assert not remove_report(root, "absent/ruff.json")


# Through the check step, with the real local sandbox.

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


def run_lint(root: Path, command: list[str], report: Report | None) -> StageResult:
    checks = Checks.model_validate(
        {"lint": {"command": command, "report": report.model_dump() if report else None}}
    )

    async def scenario() -> StageResult:
        state = await run_check.fn("lint", checks, Sandbox(), root)
        result = await state.aresult(raise_on_failure=False)
        assert isinstance(result, StageResult)
        return result

    return asyncio.run(scenario())


RUFF_REPORT = Report(format="ruff", path="reports/ruff.json")
RUFF = ["python", "-m", "ruff", "check", "--no-cache", "--output-format", "json",
        "--output-file", "reports/ruff.json", "pkg"]  # fmt: skip


@needs_bwrap
def test_a_failing_ruff_lint_yields_annotations_in_its_stage_result(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_project(tmp_path / "checkout")
    # A committed report naming another file must not survive into this run's annotations.
    stale = {
        "filename": "tests/unit/helper.py",
        "location": {"row": 1, "column": 1},
        "end_location": {"row": 1, "column": 2},
        "code": "X1",
        "message": "stale",
    }
    write(root, "reports/ruff.json", json.dumps([stale]))
    with caplog.at_level(logging.INFO):
        result = run_lint(root, RUFF, RUFF_REPORT)
    assert result.status is StageStatus.FAILED
    found = result.data["annotations"]
    # ruff ran at /workspace inside the sandbox and printed /workspace/pkg/mod.py.
    assert ("pkg/mod.py", 1, "F401") in where(found)
    assert ("pkg/mod.py", 10, "F821") in where(found)
    assert not any(a["message"] == "stale" for a in found)
    assert set(result.data) == {"flow_run_id", "annotations"}
    assert "pkg/mod.py:1: `os` imported but unused" in caplog.text


@needs_bwrap
@pytest.mark.parametrize("fail", [False, True])
def test_a_broken_or_missing_report_warns_and_leaves_the_status_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, project: Project, fail: bool
) -> None:
    root = make_project(tmp_path / "checkout")
    # Exits 0 with broken JSON, or 1 writing nothing.
    code = "raise SystemExit(1)" if fail else "open('reports/ruff.json', 'w').write('[{')"
    # A committed report, valid and naming a real file: it must be gone before the step runs.
    real = json.loads((project.root / "ruff.json").read_text())
    committed = [
        {**item, "filename": os.path.relpath(item["filename"], project.root)} for item in real
    ]
    write(root, "reports/ruff.json", json.dumps(committed))
    with caplog.at_level(logging.INFO):
        result = run_lint(root, ["python", "-c", code], RUFF_REPORT)
    assert result.status is (StageStatus.FAILED if fail else StageStatus.PASSED)
    assert result.data["annotations"] == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = "not found" if fail else "not valid JSON"
    assert any("reports/ruff.json (ruff)" in w and expected in w for w in warnings), warnings


@needs_bwrap
def test_a_check_without_a_report_has_no_annotations_key(tmp_path: Path) -> None:
    root = make_project(tmp_path / "checkout")
    result = run_lint(root, ["python", "-c", "pass"], None)
    assert result.status is StageStatus.PASSED
    assert "annotations" not in result.data
