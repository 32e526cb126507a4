"""A real PR pipeline with GitHub App credentials: a failing lint is a check run whose
annotations point at the offending file and line, parsed from ruff's own JSON report."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.fakes.github_api import FakeGitHub
from tests.plugins.gitrepo import GitRepo

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_stack"), pytest.mark.timeout(600)]

FULL_NAME = "acme/annotated"
OK = [sys.executable, "-c", "print('fine')"]
LINT = [sys.executable, "-m", "ruff", "check", "--output-format", "json"]
LINT += ["--output-file", "ruff.json", "--select", "F", "."]
MODULE = "import os\n\n\ndef handler() -> int:\n    return missing_name\n"


def argv(values: list[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


GANTRY_TOML = f"""
[checks]
static = {argv(OK)}
unit = {argv(OK)}
integration = {argv(OK)}

[checks.lint]
command = {argv(LINT)}
report = {{ format = "ruff", path = "ruff.json" }}
"""


@pytest.fixture
def app_github(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    """The pipeline's GitHub is a stand-in that knows Gantry as a GitHub App installation."""
    with FakeGitHub() as github:
        monkeypatch.delenv("GANTRY_GITHUB_TOKEN", raising=False)
        monkeypatch.setenv("GANTRY_GITHUB_API_URL", github.url)
        monkeypatch.setenv("GANTRY_GITHUB_APP_ID", str(github.app_id))
        monkeypatch.setenv("GANTRY_GITHUB_APP_PRIVATE_KEY", github.private_key_pem)
        monkeypatch.setenv("GANTRY_GITHUB_APP_INSTALLATION_ID", str(github.installation_id))
        yield github


def test_a_failing_lint_is_a_check_run_annotated_at_the_offending_line(
    make_repo: Callable[[str], GitRepo], app_github: FakeGitHub
) -> None:
    from flows.pipelines.pr import pr_pipeline

    repo = make_repo("annotated")
    sha = repo.commit({"gantry.toml": GANTRY_TOML, "app/handlers.py": MODULE})

    state = asyncio.run(
        pr_pipeline(str(repo.path), sha, pr_number=3, repository_name=FULL_NAME, return_state=True)
    )

    assert state.is_failed()
    runs = {run["name"]: run for run in app_github.check_runs_for(FULL_NAME, sha)}
    assert {"gantry/lint", "gantry/unit"} <= set(runs)
    lint = runs["gantry/lint"]
    assert (lint["status"], lint["conclusion"]) == ("completed", "failure")
    assert lint["external_id"].startswith("pr:3:")
    assert runs["gantry/unit"]["conclusion"] == "success"
    found = {
        (a["path"], a["start_line"], a.get("title"), a["annotation_level"])
        for a in app_github.annotations_of(lint["id"])
    }
    assert ("app/handlers.py", 1, "F401", "failure") in found  # `os` imported but unused
    assert ("app/handlers.py", 5, "F821", "failure") in found  # undefined name
    # An App install writes check runs, not commit statuses.
    assert not app_github.requests_to(f"/statuses/{sha}")
