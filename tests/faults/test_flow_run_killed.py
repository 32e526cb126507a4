"""Crashed runs on the real stack: the flow-run process SIGKILLed mid-step, or gone without a
final state. Its step dies, it is retried once, GitHub hears ``error``, not ``failure``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.states import Running

from core.settings import PR_DEPLOYMENT
from deployments.crashes import RETRIED_AS, RETRY_OF, CrashSettings
from deployments.stack import Stack
from deployments.zombies import apply_zombie_automation
from tests.fakes.github_api import FakeGitHub
from tests.plugins.deadlines import pids_with, wait_for
from tests.plugins.gitrepo import GitRepo, gantry_toml

pytestmark = pytest.mark.slow
PY = sys.executable
# The promise: a crashed attempt's steps are gone this soon after its process died.
STEP_GONE_SECONDS = 15.0
# The step each attempt runs: long enough that it would outlive that bound if nobody killed it.
STEP_SECONDS = 40


def hosted(stack: Stack, full_name: str) -> GitRepo:
    return GitRepo(stack.settings.state_dir / "git" / full_name)


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent of {pid}")


def flow_run_process(marker: str) -> int | None:
    """The flow-run process running the step: bubblewrap's parent (the sandbox's init and the
    step are in their own PID namespace, under bubblewrap)."""
    for pid in pids_with(marker):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"bwrap"):
                return parent_of(pid)
        except OSError:
            continue
    return None


def sync(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _read(run_id: UUID) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(run_id)


async def _retries_of(run_id: UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"{RETRY_OF}{run_id}"]))
        )


def state_of(run_id: UUID) -> str | None:
    run = sync(_read(run_id))
    return run.state.type.value if run.state else None


def one_retry(run_id: UUID) -> FlowRun | None:
    runs = sync(_retries_of(run_id))
    assert len(runs) <= 1, [r.id for r in runs]
    return runs[0] if runs else None


def final(run_id: UUID) -> str | None:
    run = sync(_read(run_id))
    return run.state.type.value if run.state and run.state.is_final() else None


def start_pr(name: str, repository_id: int, sha: str) -> UUID:
    """A PR run as the webhook dispatcher starts one: through the deployment, by identity."""

    async def start() -> UUID:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(PR_DEPLOYMENT)
            run = await client.create_flow_run_from_deployment(
                deployment.id,
                parameters={
                    "repository": None,
                    "sha": sha,
                    "pr_number": 1,
                    "repository_name": name,
                    "repository_id": repository_id,
                },
            )
            return run.id

    return asyncio.run(start())


def sleeping_repo(stack: Stack, name: str, marker: str) -> str:
    """A repository whose one check sleeps STEP_SECONDS; ``marker`` names its process."""
    repo = hosted(stack, name)
    sleep = [PY, "-c", f"import time; time.sleep({STEP_SECONDS})", marker]
    return repo.commit({"gantry.toml": gantry_toml(lint=None, unit=sleep)})


def kill_mid_step(marker: str) -> float:
    """SIGKILL the flow-run process once its step runs; when it was killed."""
    pid = wait_for("the step started", lambda: flow_run_process(marker), 180)
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def statuses(github: FakeGitHub, name: str, sha: str) -> list[dict[str, Any]]:
    return list(github.state.statuses.get((name, sha), []))


def test_a_run_killed_mid_step_loses_its_step_and_is_retried_once(
    local_stack: Stack, session_github: FakeGitHub
) -> None:
    name = f"acme/crash-{uuid.uuid4().hex[:6]}"
    marker = f"gantry-crash-test-{uuid.uuid4().hex}"
    sha = sleeping_repo(local_stack, name, marker)
    crashed_id = start_pr(name, 9301, sha)
    killed_at = kill_mid_step(marker)

    # The step's process dies with its attempt, not STEP_SECONDS later.
    wait_for("the crashed attempt's step gone", lambda: not pids_with(marker), 15)
    assert time.monotonic() - killed_at < STEP_SECONDS
    wait_for("the run marked Crashed", lambda: state_of(crashed_id) == "CRASHED", 60)

    retry = wait_for("a retry of the crashed run", lambda: one_retry(crashed_id), 60)
    crashed = sync(_read(crashed_id))
    assert retry.parameters == crashed.parameters
    assert retry.deployment_id == crashed.deployment_id
    assert f"{RETRIED_AS}{retry.id}" in crashed.tags
    # The retry completes without anyone acting; still exactly one.
    assert wait_for("the retry finished", lambda: final(retry.id), 300) == "COMPLETED"
    assert one_retry(crashed_id) is not None

    reported = statuses(session_github, name, sha)
    errors = [s for s in reported if s["state"] == "error"]
    assert errors, reported
    # The stages in flight at the crash (the sleeping check, maybe others): each one's.
    errored = {s["context"] for s in errors}
    assert "gantry/unit" in errored, errors
    assert str(crashed_id) in errors[0]["description"]
    assert str(retry.id) in errors[0]["target_url"]
    assert not [s for s in reported if s["state"] == "failure"], reported
    # The retry's own results replaced the crash on the pull request: passed, or (the scan,
    # with no Snyk token here) skipped, which stays pending and never reads as success.
    for context in errored:
        latest = [s for s in reported if s["context"] == context][-1]
        skipped = latest["state"] == "pending" and "(not run)" in (latest["description"] or "")
        assert latest["state"] == "success" or skipped, (context, latest["description"])


def test_a_retry_that_crashes_again_is_not_retried(
    local_stack: Stack, session_github: FakeGitHub
) -> None:
    name = f"acme/crash-twice-{uuid.uuid4().hex[:6]}"
    marker = f"gantry-crash-test-{uuid.uuid4().hex}"
    sha = sleeping_repo(local_stack, name, marker)
    first = start_pr(name, 9302, sha)
    kill_mid_step(marker)
    retry = wait_for("a retry of the crashed run", lambda: one_retry(first), 60)
    wait_for("the first step gone", lambda: not pids_with(marker), 15)
    kill_mid_step(marker)
    wait_for("the retry marked Crashed", lambda: state_of(retry.id) == "CRASHED", 60)

    def handled() -> bool:
        return any(
            "not retried" in (s["description"] or "") for s in statuses(session_github, name, sha)
        )

    # The service reports what it did; by then a second retry would exist.
    wait_for("the second crash reported", handled, 60)
    assert one_retry(retry.id) is None
    assert RETRIED_AS not in " ".join(sync(_read(retry.id)).tags)
    wait_for("the retry's step gone", lambda: not pids_with(marker), 15)


@pytest.fixture
def short_zombie_bound(monkeypatch: pytest.MonkeyPatch) -> Iterator[timedelta]:
    """The zombie automation with a short bound, for this test only; the stack's own is 90 s."""
    monkeypatch.setenv("GANTRY_CRASH_ZOMBIE_SECONDS", "10")
    bound = timedelta(seconds=CrashSettings().zombie_seconds)
    automation = sync(apply_zombie_automation(bound, name=f"test-zombies-{uuid.uuid4().hex}"))
    try:
        yield bound
    finally:
        sync(Automation.adelete(automation))


def test_a_running_run_without_a_process_is_crashed_and_retried(
    local_stack: Stack, session_github: FakeGitHub, short_zombie_bound: timedelta
) -> None:
    name = f"acme/zombie-{uuid.uuid4().hex[:6]}"
    sha = hosted(local_stack, name).commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})

    async def zombie() -> UUID:
        # Running from the start: no worker picks it up, no process ever sends a heartbeat.
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(PR_DEPLOYMENT)
            run = await client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"repository": None, "sha": sha, "repository_name": name},
                state=Running(),
            )
            return run.id

    run_id = sync(zombie())
    started = time.monotonic()
    # The bound, plus Prefect's proactive evaluation period (5 s) and the event's way there.
    wait_for("the zombie marked Crashed", lambda: state_of(run_id) == "CRASHED", 10 + 5 + 15)
    assert time.monotonic() - started >= short_zombie_bound.total_seconds() - 1
    retry = wait_for("its retry", lambda: one_retry(run_id), 60)
    assert wait_for("the retry finished", lambda: final(retry.id), 300) == "COMPLETED"
