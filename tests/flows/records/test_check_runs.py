"""With GitHub App credentials each stage is a check run: conclusion, output and annotations;
a crashed run's check runs are completed; GitHub trouble never reaches the pipeline."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from clients.github import RetryPolicy
from clients.github_checks import parse_check_external_id
from clients.github_models import CheckAnnotation
from flows.records.check_runs import ANNOTATION_CAP, stage_output
from flows.records.github_report import StatusReporter
from flows.results import StageResult, StageStatus
from tests.fakes.github_api import FakeGitHub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

REPO = "acme/api"
SHA = "0123456789abcdef0123456789abcdef01234567"
UI = "http://prefect.example:4200"
RUN_ID = "6f1c1e0a-1111-4222-8333-944455556666"
RETRY_ID = "7a2d2f1b-2222-4333-8444-a55566667777"
FAST = RetryPolicy(attempts=2, backoff=0.01, backoff_cap=0.02, max_wait=0.5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def app_reporter(fake: FakeGitHub, **kwargs: Any) -> StatusReporter:
    kwargs.setdefault("flow_run_id", RUN_ID)
    return StatusReporter.from_credentials(
        REPO,
        SHA,
        fake.credentials(app=True, ui_url=UI),
        policy=FAST,
        pipeline="pr",
        pr_number=12,
        **kwargs,
    )


def findings(count: int) -> list[dict[str, Any]]:
    return [
        CheckAnnotation(
            path=f"src/mod{n % 3}.py",
            start_line=n + 1,
            end_line=n + 1,
            start_column=5,
            end_column=9,
            annotation_level="warning" if n % 2 else "failure",
            message=f"F401 unused import number {n}",
            title="ruff",
        ).payload()
        for n in range(count)
    ]


def by_name(fake: FakeGitHub) -> dict[str, dict[str, Any]]:
    return {run["name"]: run for run in fake.check_runs_for(REPO, SHA)}


async def test_stages_become_check_runs_failed_with_all_120_annotations_passed_and_skipped(
    github_api: FakeGitHub,
) -> None:
    annotations = findings(120)
    async with app_reporter(github_api) as reporter:
        assert reporter.uses_check_runs
        for stage in ("lint", "unit", "scan"):
            await reporter.stage_started(stage)
        await reporter.stage_finished(
            "lint",
            StageResult(
                name="lint",
                status=StageStatus.FAILED,
                seconds=2.5,
                exit_code=1,
                tail="src/mod0.py:1:5: F401 unused import\nFound 120 errors.",
                data={"annotations": annotations},
            ),
        )
        await reporter.stage_finished(
            "unit", StageResult(name="unit", status=StageStatus.PASSED, seconds=4)
        )
        await reporter.stage_finished(
            "scan",
            StageResult(name="scan", status=StageStatus.SKIPPED, detail="no scanner configured"),
        )

    runs = by_name(github_api)
    assert set(runs) == {"gantry/lint", "gantry/unit", "gantry/scan"}
    lint, unit, scan = runs["gantry/lint"], runs["gantry/unit"], runs["gantry/scan"]
    assert (lint["status"], lint["conclusion"]) == ("completed", "failure")
    assert lint["output"]["title"] == "failed after 2.5s: exit code 1"
    assert "Found 120 errors." in lint["output"]["summary"]
    stored = github_api.annotations_of(lint["id"])
    assert [(a["path"], a["start_line"], a["message"]) for a in stored] == [
        (a["path"], a["start_line"], a["message"]) for a in annotations
    ]
    patches = github_api.requests_to(f"/check-runs/{lint['id']}", "PATCH")
    assert [len(p.json["output"].get("annotations", [])) for p in patches] == [50, 50, 20]
    assert (unit["conclusion"], unit["output"]["title"]) == ("success", "passed in 4.0s")
    assert scan["conclusion"] == "skipped"
    assert scan["output"]["title"] == "skipped: no scanner configured (not run)"
    assert "did not run" in scan["output"]["summary"]
    # One check run per stage: each started one was completed, none created twice.
    assert len(github_api.requests_to("/check-runs", "POST")) == 3
    for run in runs.values():
        assert run["details_url"] == f"{UI}/runs/flow-run/{RUN_ID}"
        assert parse_check_external_id(run["external_id"]) == ("pr", 12, RUN_ID)
    assert github_api.state.statuses == {}


async def test_a_stage_whose_start_was_lost_is_reported_whole_when_it_ends(
    github_api: FakeGitHub,
) -> None:
    github_api.fail_next(2, path_contains="/check-runs")  # both tries of the start fail
    async with app_reporter(github_api) as reporter:
        await reporter.stage_started("unit")
        await reporter.stage_finished(
            "unit",
            StageResult(
                name="unit", status=StageStatus.CACHED, cached_from="5e5e5e5e-0000-4000-8000-1"
            ),
        )

    [run] = github_api.check_runs_for(REPO, SHA)
    assert (run["status"], run["conclusion"]) == ("completed", "success")
    assert f"({UI}/runs/flow-run/5e5e5e5e-0000-4000-8000-1)" in run["output"]["summary"]


async def test_a_crashed_runs_in_flight_check_runs_complete_as_failure(
    github_api: FakeGitHub,
) -> None:
    # The crashed run started two stages and finished one of them.
    async with app_reporter(github_api) as reporter:
        for stage in ("lint", "unit"):
            await reporter.stage_started(stage)
        await reporter.stage_finished(
            "lint", StageResult(name="lint", status=StageStatus.PASSED, seconds=1)
        )
    # Another run of the same commit is in flight too: its check run is not touched.
    async with app_reporter(github_api, flow_run_id=RETRY_ID) as other:
        await other.stage_started("scan")

    # The crash handler, in another process, links the retry and names the crashed run.
    async with app_reporter(github_api, flow_run_id=RETRY_ID) as crash:
        await crash.infrastructure_error(
            ["unit"], "infrastructure crash, not the code; retried", crashed_run_id=RUN_ID
        )

    runs = by_name(github_api)
    unit = runs["gantry/unit"]
    assert (unit["status"], unit["conclusion"]) == ("completed", "failure")
    assert unit["output"]["title"].startswith("infrastructure crashed: ")
    assert unit["details_url"] == f"{UI}/runs/flow-run/{RETRY_ID}"
    assert runs["gantry/lint"]["conclusion"] == "success"
    assert runs["gantry/scan"]["status"] == "in_progress"
    assert len(github_api.check_runs_for(REPO, SHA)) == 3  # completed, none added
    assert github_api.state.statuses == {}


async def test_a_crash_with_nothing_in_flight_reports_a_failed_run_check(
    github_api: FakeGitHub,
) -> None:
    async with app_reporter(github_api) as crash:
        await crash.infrastructure_error(
            [], "infrastructure crash, not retried", crashed_run_id=RUN_ID
        )

    [run] = github_api.check_runs_for(REPO, SHA)
    assert (run["name"], run["conclusion"]) == ("gantry/run", "failure")
    assert parse_check_external_id(run["external_id"]).flow_run_id == RUN_ID


async def test_malformed_and_excess_annotations_are_left_out_and_the_summary_says_so() -> None:
    valid = findings(ANNOTATION_CAP + 5)
    broken: list[Any] = [{"path": "a.py"}, "not an annotation", {**valid[0], "start_line": 0}]
    result = StageResult(
        name="lint", status=StageStatus.FAILED, data={"annotations": [*broken, *valid]}
    )

    output = stage_output(result)

    assert len(output.annotations) == ANNOTATION_CAP
    assert f"the first {ANNOTATION_CAP:,} of {ANNOTATION_CAP + 5:,}" in output.summary
    assert "3 malformed annotations were left out" in output.summary


def test_secrets_in_output_and_annotations_are_masked_and_output_cannot_forge_markdown() -> None:
    leak = "ghp_abcdefghijklmnop1234"
    result = StageResult(
        name="lint",
        status=StageStatus.FAILED,
        detail=f"push refused for {leak}",
        tail=f"token {leak}\n```\n## Approved by security",
        data={"annotations": [{**findings(1)[0], "message": f"hardcoded {leak}"}]},
    )

    output = stage_output(result)

    assert leak not in output.title + output.summary
    assert leak not in output.annotations[0].message
    # The tail sits in a fence longer than any backtick run it holds.
    assert "\n````text\n" in f"\n{output.summary}\n"


async def test_github_refusing_check_runs_never_reaches_the_pipeline(
    github_api: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gantry.report")
    github_api.fail_next(20, status=500, path_contains="/check-runs")
    async with app_reporter(github_api) as reporter:
        await reporter.stage_started("lint")
        await reporter.stage_finished(
            "lint", StageResult(name="lint", status=StageStatus.FAILED, seconds=1)
        )
        await reporter.infrastructure_error(["lint"], "crash", crashed_run_id=RUN_ID)

    warnings = [r.getMessage() for r in caplog.records if r.name == "gantry.report"]
    assert len(warnings) == 3
    assert all("could not report" in w for w in warnings)
    assert all(github_api.private_key_pem not in w for w in warnings)
