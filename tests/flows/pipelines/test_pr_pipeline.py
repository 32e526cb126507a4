"""The PR pipeline run for real: a real Prefect server, real git repositories, real commands."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from deployments.stack import Stack
from flows.pipelines.pr import pr_pipeline
from flows.pipelines.stages import PipelineSummary
from tests.plugins.gitrepo import GitRepo, gantry_toml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_stack")]
PY = sys.executable


def run_pr(repo: GitRepo, sha: str) -> tuple[Any, PipelineSummary]:
    state = asyncio.run(pr_pipeline(str(repo.path), sha, pr_number=3, return_state=True))
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, PipelineSummary)
    return state, summary


def statuses(summary: PipelineSummary) -> dict[str, str]:
    return {s.name: s.status.value for s in summary.stages}


def test_all_stages_pass_and_the_summary_artifact_lists_them(
    make_repo: Callable[[str], GitRepo],
) -> None:
    repo = make_repo("ok")
    ok = [PY, "-c", "print('fine')"]
    sha = repo.commit({"gantry.toml": gantry_toml(lint=ok, static=ok, unit=ok, integration=ok)})
    state, summary = run_pr(repo, sha)
    assert state.is_completed()
    assert statuses(summary) == {
        **dict.fromkeys(["lint", "static", "unit", "integration"], "passed"),
        "build": "skipped",  # no [[images]] declared: shown as skipped, not passed
        "scan": "skipped",  # no Snyk token here: "not configured", never passed
    }

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
                )
            )

    keys = {a.key for a in asyncio.run(artifacts())}
    assert {"pr-summary", "pr-report"} <= keys


def test_one_failing_stage_fails_the_run_and_the_others_still_report(
    make_repo: Callable[[str], GitRepo],
) -> None:
    repo = make_repo("one-fails")
    ok = [PY, "-c", "print('fine')"]
    bad = [PY, "-c", "print('3 tests failed'); raise SystemExit(1)"]
    sha = repo.commit({"gantry.toml": gantry_toml(lint=ok, static=ok, unit=bad, integration=ok)})
    state, summary = run_pr(repo, sha)
    assert state.is_failed()
    assert state.message == "failed stages: unit"
    assert statuses(summary) == {
        "lint": "passed",
        "static": "passed",
        "unit": "failed",
        "integration": "passed",
        "build": "skipped",
        "scan": "skipped",
    }
    unit = next(s for s in summary.stages if s.name == "unit")
    assert unit.exit_code == 1
    assert "3 tests failed" in unit.tail


def test_a_stage_that_hangs_is_stopped_at_its_timeout(make_repo: Callable[[str], GitRepo]) -> None:
    repo = make_repo("hangs")
    toml = (
        "[checks]\n"
        f'lint = ["{PY}", "-c", "print(1)"]\n'
        f'unit = {{ command = ["{PY}", "-c", "import time; time.sleep(120)"], timeout = 1.5 }}\n'
    )
    sha = repo.commit({"gantry.toml": toml})
    state, summary = run_pr(repo, sha)
    assert state.is_failed()
    unit = next(s for s in summary.stages if s.name == "unit")
    assert unit.status.value == "failed"
    assert unit.detail.startswith("timed out after")
    # Ended before its command could have: the timeout stopped it.
    assert unit.seconds < 120
    assert statuses(summary)["static"] == "skipped"


def test_a_command_missing_from_path_fails_its_stage_clearly(
    make_repo: Callable[[str], GitRepo],
) -> None:
    repo = make_repo("missing-tool")
    sha = repo.commit({"gantry.toml": gantry_toml(lint=["gantry-no-such-linter", "."])})
    state, summary = run_pr(repo, sha)
    assert state.is_failed()
    lint = next(s for s in summary.stages if s.name == "lint")
    assert lint.detail == "command not found: 'gantry-no-such-linter' is not on PATH"


def test_a_bad_gantry_toml_fails_the_run_naming_the_key(
    make_repo: Callable[[str], GitRepo],
) -> None:
    repo = make_repo("bad-config")
    sha = repo.commit({"gantry.toml": '[checks]\nlint = "ruff check ."\n'})
    state, summary = run_pr(repo, sha)
    assert state.is_failed()
    assert [s.name for s in summary.stages] == ["config"]
    assert "gantry.toml: checks.lint: a shell string is not accepted" in summary.stages[0].detail


def test_an_unknown_commit_fails_the_checkout_stage(make_repo: Callable[[str], GitRepo]) -> None:
    repo = make_repo("no-such-commit")
    repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})
    state, summary = run_pr(repo, "f" * 40)
    assert state.is_failed()
    assert summary.stages[0].name == "checkout"


def test_independent_stages_overlap_in_time(make_repo: Callable[[str], GitRepo]) -> None:
    # Each check prints when it started and ended (a sandboxed step can write nowhere but its
    # checkout, and stdout is what reaches the run): the spans come back in the stage tails.
    script = "import time; s = time.time(); time.sleep(1.0); print('span', s, time.time())"
    checks = {n: [PY, "-c", script] for n in ("lint", "static", "unit", "integration")}
    repo = make_repo("overlap")
    sha = repo.commit({"gantry.toml": gantry_toml(**checks)})
    state, summary = run_pr(repo, sha)
    assert state.is_completed()
    spans = [
        tuple(map(float, line.split("span ", 1)[1].split()))
        for stage in summary.stages
        if stage.name in checks
        for line in stage.tail.splitlines()
        if "span " in line
    ]
    assert len(spans) == 4
    # Every stage started before any other stage ended: they ran at the same time.
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_the_workspace_is_removed_after_the_run(
    make_repo: Callable[[str], GitRepo], local_stack: Stack
) -> None:
    repo = make_repo("cleanup")
    sha = repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})
    run_pr(repo, sha)
    leftovers = list((local_stack.settings.state_dir / "workspaces").glob("pr-3-*"))
    assert leftovers == []
