"""StatusReporter: stage outcomes become commit statuses; GitHub trouble never stops a pipeline."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from blocks.github import GitHubCredentials
from clients.github import RetryPolicy
from core.links import flow_run_url
from flows.records.github_report import StatusReporter, describe
from flows.results import StageResult, StageStatus

if TYPE_CHECKING:
    from deployments.prefect_server import PrefectServer
from tests.fakes.github_api import FakeGitHub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = "acme/api"
SHA = "0123456789abcdef0123456789abcdef01234567"
UI = "http://prefect.example:4200"
RUN_ID = "6f1c1e0a-1111-4222-8333-944455556666"
FAST = RetryPolicy(attempts=2, backoff=0.01, backoff_cap=0.02, max_wait=0.5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def reporter_for(
    fake: FakeGitHub, token: str | None = None, policy: RetryPolicy = FAST, **kwargs: object
) -> StatusReporter:
    credentials = fake.credentials(token=token, ui_url=UI)
    return StatusReporter.from_credentials(
        REPO, SHA, credentials, policy=policy, flow_run_id=RUN_ID, **kwargs
    )


def result(status: StageStatus, **fields: object) -> StageResult:
    return StageResult(name="unit", status=status, **fields)


@pytest.mark.parametrize(
    ("stage", "expected_state", "expected_description"),
    [
        (result(StageStatus.PASSED, seconds=3.14), "success", "passed in 3.1s"),
        (result(StageStatus.CACHED), "success", "passed (cached result of an unchanged commit)"),
        (
            result(StageStatus.SKIPPED, detail="no [checks] unit command"),
            "pending",
            "skipped: no [checks] unit command (not run)",
        ),
        (result(StageStatus.SKIPPED), "pending", "skipped: not configured (not run)"),
        (
            result(StageStatus.FAILED, seconds=2, exit_code=1),
            "failure",
            "failed after 2.0s: exit code 1",
        ),
        (
            result(StageStatus.FAILED, detail="timed out after 600s\nmore lines"),
            "failure",
            "failed after 0.0s: timed out after 600s",
        ),
        (result(StageStatus.CANCELLED), "error", "cancelled"),
    ],
)
def test_stage_status_maps_to_github_state(
    stage: StageResult, expected_state: str, expected_description: str
) -> None:
    assert describe(stage) == (expected_state, expected_description)


def test_failure_detail_never_carries_a_token_to_github() -> None:
    leaky = result(StageStatus.FAILED, detail="push refused for ghp_abcdefghijklmnop1234")

    _, description = describe(leaky)

    assert "ghp_abcdefghijklmnop1234" not in description
    assert "[redacted]" in description


def test_failure_detail_masks_registered_secrets_keys_and_control_characters() -> None:
    from core.redact import forget_secrets, register_secret

    register_secret("registered-value-31c8e2")
    try:
        leaky = result(
            StageStatus.FAILED,
            detail="\x1b[31m-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n"
            "-----END PRIVATE KEY-----\u202e registered-value-31c8e2",
        )

        _, description = describe(leaky)
    finally:
        forget_secrets()

    assert description.endswith(": [redacted private key] [redacted]")


async def test_stage_start_and_finish_post_pending_then_final_status_linking_the_run(
    github_api: FakeGitHub,
) -> None:
    async with reporter_for(github_api) as reporter:
        await reporter.stage_started("lint")
        await reporter.stage_finished("lint", result(StageStatus.PASSED, seconds=1))

    statuses = github_api.state.statuses[(REPO, SHA)]
    assert [(s["context"], s["state"]) for s in statuses] == [
        ("gantry/lint", "pending"),
        ("gantry/lint", "success"),
    ]
    assert {s["target_url"] for s in statuses} == {f"{UI}/runs/flow-run/{RUN_ID}"}
    assert statuses[0]["description"] == "running"


async def test_with_a_token_a_skipped_stage_stays_pending_and_no_check_run_is_asked_for(
    github_api: FakeGitHub,
) -> None:
    async with reporter_for(github_api, pipeline="pr", pr_number=12) as reporter:
        assert not reporter.uses_check_runs
        for stage in ("lint", "unit"):
            await reporter.stage_started(stage)
        await reporter.stage_finished("lint", result(StageStatus.PASSED, seconds=1))
        await reporter.stage_finished(
            "unit", result(StageStatus.SKIPPED, detail="no [checks] unit command")
        )

    statuses = github_api.state.statuses[(REPO, SHA)]
    final = {s["context"]: (s["state"], s["description"]) for s in statuses}
    assert final == {
        "gantry/lint": ("success", "passed in 1.0s"),
        "gantry/unit": ("pending", "skipped: no [checks] unit command (not run)"),
    }
    assert not any(s["context"] == "gantry/unit" and s["state"] == "success" for s in statuses)
    assert github_api.requests_to("/check-runs") == []


async def test_reporter_never_raises_when_github_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    credentials = GitHubCredentials(api_url=f"http://127.0.0.1:{port}", token=SecretStr("ghp_x1"))
    caplog.set_level(logging.WARNING, logger="gantry.report")
    async with StatusReporter.from_credentials(REPO, SHA, credentials, policy=FAST) as reporter:
        await reporter.stage_started("lint")
        await reporter.stage_finished("lint", result(StageStatus.FAILED))
        deployment = await reporter.deployment_started("staging", SHA)
        await reporter.deployment_finished(deployment, "success")

    assert deployment is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "gantry.report"]
    assert len(warnings) == 3
    assert all("could not report" in w and "ConnectError" in w for w in warnings)


async def test_reporter_survives_server_errors_and_rate_limits(github_api: FakeGitHub) -> None:
    github_api.fail_next(2, "server_error")
    github_api.fail_next(1, "secondary_rate_limit", retry_after=3600)
    async with reporter_for(github_api) as reporter:
        await reporter.stage_started("lint")  # both attempts get a 500
        await reporter.stage_started("unit")  # rate limited past the bound
        await reporter.stage_started("static")  # GitHub is back

    assert [s["context"] for s in github_api.state.statuses[(REPO, SHA)]] == ["gantry/static"]


async def test_a_report_that_hangs_is_abandoned_after_the_timeout(github_api: FakeGitHub) -> None:
    # GitHub asks for a 20 s wait, which the retry policy would honour (max_wait 30 s): only
    # the report's own 0.2 s timeout can end it before those 20 s pass.
    github_api.fail_next(1, "secondary_rate_limit", retry_after=20)
    started = time.monotonic()
    async with reporter_for(github_api, policy=RetryPolicy(max_wait=30), timeout=0.2) as reporter:
        await reporter.stage_started("lint")

    assert time.monotonic() - started < 20
    assert (REPO, SHA) not in github_api.state.statuses


async def test_without_credentials_reporting_is_off_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gantry.report")
    async with StatusReporter.from_credentials(REPO, SHA, None) as reporter:
        await reporter.stage_started("lint")
        await reporter.stage_finished("lint", result(StageStatus.PASSED))
        assert await reporter.deployment_started("staging", SHA) is None
        await reporter.deployment_finished(None, "success")

    assert not reporter.enabled
    messages = [r.getMessage() for r in caplog.records if r.name == "gantry.report"]
    assert messages == ["GitHub reporting is off: no credentials"]


async def test_load_without_block_or_environment_turns_reporting_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("GANTRY_GITHUB_TOKEN", "GANTRY_GITHUB_APP_ID", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.INFO, logger="gantry.report")

    reporter = await StatusReporter.load(REPO, SHA)

    assert not reporter.enabled
    assert "GitHub reporting is off: no credentials" in caplog.messages


async def test_load_uses_the_environment_token(
    github_api: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("GANTRY_GITHUB_TOKEN", github_api.token)
    monkeypatch.setenv("GANTRY_GITHUB_API_URL", github_api.url)

    async with await StatusReporter.load(REPO, SHA, flow_run_id=RUN_ID) as reporter:
        await reporter.stage_started("lint")

    [request] = github_api.requests
    assert request.headers["authorization"] == f"Bearer {github_api.token}"


async def test_deployment_is_reported_in_progress_then_final(github_api: FakeGitHub) -> None:
    async with reporter_for(github_api) as reporter:
        deployment_id = await reporter.deployment_started(
            "staging", SHA, payload={"digests": {"api": "sha256:1"}}
        )
        assert deployment_id is not None
        await reporter.deployment_finished(deployment_id, "success", "http://staging.local")

    deployment = github_api.state.deployments[deployment_id]
    assert deployment["environment"] == "staging"
    assert deployment["production_environment"] is False
    states = github_api.state.deployment_statuses[deployment_id]
    assert [(s["state"], s["environment_url"]) for s in states] == [
        ("in_progress", ""),
        ("success", "http://staging.local"),
    ]
    assert states[0]["log_url"] == f"{UI}/runs/flow-run/{RUN_ID}"


async def test_no_token_appears_in_any_log_record(
    github_api: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "ghp_wrongButSecretToken987654321"
    async with reporter_for(github_api, token=wrong) as reporter:
        await reporter.stage_started("lint")
        await reporter.stage_finished("lint", result(StageStatus.PASSED))
    async with reporter_for(github_api) as reporter:
        await reporter.stage_started("unit")

    assert any("Bad credentials" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert wrong not in text
        assert github_api.token not in text


def test_target_url_is_none_outside_a_flow_run_without_ui() -> None:
    assert flow_run_url(ui_url=UI, flow_run_id=None) is None
    assert flow_run_url(ui_url=f"{UI}/", flow_run_id="abc") == f"{UI}/runs/flow-run/abc"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_inside_a_flow_run_statuses_link_to_that_run_in_the_prefect_ui(
    github_api: FakeGitHub, prefect_server: PrefectServer
) -> None:
    from prefect import flow

    del prefect_server  # the session's real server, shared rather than one more to start

    credentials = github_api.credentials()

    @flow(name="report-probe")
    async def probe() -> str:
        from prefect.runtime import flow_run

        async with StatusReporter.from_credentials(REPO, SHA, credentials, ui_url=UI) as reporter:
            await reporter.stage_started("lint")
        return str(flow_run.id)

    run_id = asyncio.run(probe())

    [status] = github_api.state.statuses[(REPO, SHA)]
    assert status["target_url"] == f"{UI}/runs/flow-run/{run_id}"
