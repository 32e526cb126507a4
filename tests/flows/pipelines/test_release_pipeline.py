"""The release pipeline for real: signed approvals, promotion by digest, rollback, guard rails."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from core.identity import name_slug
from core.settings import RELEASE_DEPLOYMENT
from deployments.stack import Stack
from flows.pipelines.merge import merge_pipeline
from flows.pipelines.stages import PipelineSummary
from flows.records.store import list_releases
from tests.fakes.github_api import FakeGitHub
from tests.flows.pipelines.approvers import Approvers
from tests.flows.pipelines.service_repo import commit_version
from tests.plugins.gitrepo import GitRepo
from tests.plugins.stack import as_json, gantry

pytestmark = [pytest.mark.slow, pytest.mark.engine]


class Service:
    def __init__(self, repo: GitRepo, name: str) -> None:
        self.repo = repo
        self.name = name
        self.slug = name_slug(name)

    def merge(self, version: str, **markers: bool) -> PipelineSummary:
        sha = commit_version(self.repo, version, **markers)
        state = asyncio.run(
            merge_pipeline(str(self.repo.path), sha, repository_name=self.name, return_state=True)
        )
        summary = state.result(raise_on_failure=False)
        assert isinstance(summary, PipelineSummary)
        assert state.is_completed(), summary.stages
        return summary

    def start_release(self, **params: Any) -> str:
        async def start() -> FlowRun:
            run: FlowRun = await run_deployment(
                RELEASE_DEPLOYMENT,
                parameters={"repository_name": self.name, **params},
                timeout=0,
            )
            return run

        return str(asyncio.run(start()).id)

    def releases(self) -> list[Any]:
        return asyncio.run(list_releases(self.slug))


def read_run(run_id: str) -> FlowRun:
    async def read() -> FlowRun:
        async with get_client() as client:
            return await client.read_flow_run(uuid.UUID(run_id))

    return asyncio.run(read())


def wait_for(run_id: str, check: Callable[[FlowRun], bool], timeout: float = 300) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = read_run(run_id)
        if check(run):
            return run
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} stuck in {read_run(run_id).state}")


def paused(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_paused()


def final(run: FlowRun) -> bool:
    return run.state is not None and run.state.is_final()


def served(url: str) -> str | None:
    try:
        version: str = httpx.get(f"{url}/version", timeout=5).json()["version"]
    except httpx.HTTPError:
        return None
    return version


@pytest.fixture(scope="module")
def approvers(tmp_path_factory: pytest.TempPathFactory) -> Approvers:
    return Approvers(tmp_path_factory.mktemp("approver-keys"))


@pytest.fixture(autouse=True)
def policy(local_stack: Stack, approvers: Approvers) -> None:
    """The worker's release policy file: alice may approve, within 10 minutes."""
    approvers.write_policy(local_stack.settings, "alice", approval_timeout=600)


@pytest.fixture
def rollback_policy(local_stack: Stack, approvers: Approvers) -> None:
    """The worker's policy lets a rollback go without an approval."""
    approvers.write_policy(
        local_stack.settings, "alice", approval_timeout=600, allow_rollback_without_approval=True
    )


@pytest.fixture
def service(make_repo: Callable[[str], GitRepo]) -> Service:
    suffix = uuid.uuid4().hex[:6]
    return Service(make_repo(f"rel-{suffix}"), f"acme/rel-{suffix}")


def release(service: Service, approvers: Approvers, **params: Any) -> FlowRun:
    run_id = service.start_release(**params)
    wait_for(run_id, paused)
    assert approvers.answer(run_id, "alice").accepted
    return wait_for(run_id, final)


def production_url(run: FlowRun) -> str:
    state = run.state
    assert state is not None
    summary = asyncio.run(state.aresult(raise_on_failure=False))
    assert isinstance(summary, PipelineSummary)
    url: str = summary.data["production_url"]
    return url


def production_deployments(
    github: FakeGitHub, service: Service
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The GitHub deployments to production the stand-in received for ``service``, oldest first."""
    found = []
    for deployment_id, deployment in sorted(github.state.deployments.items()):
        ours = deployment["repository_url"].endswith(f"/repos/{service.name}")
        if ours and deployment["environment"] == "production":
            found.append((deployment, github.state.deployment_statuses.get(deployment_id, [])))
    return found


def test_an_approved_release_reaches_production_with_the_candidates_digests(
    service: Service, approvers: Approvers, session_github: FakeGitHub
) -> None:
    merged = service.merge("v1")
    run = release(service, approvers)
    assert run.state is not None and run.state.is_completed(), run.state
    url = production_url(run)
    assert served(url) == "v1"
    # The run's summary starts with the registry's signed provenance of the candidate's digests,
    # verified before the gate; then the gate: who approved, and how long it waited.
    rows = summary_rows(str(run.id))
    assert (rows[0]["stage"], rows[0]["status"]) == ("provenance", "passed")
    assert (rows[1]["stage"], rows[1]["status"]) == ("approval", "passed")
    assert rows[1]["detail"] == "approved by alice@example.invalid"
    assert [row["stage"] for row in rows[2:4]] == ["deploy-production", "smoke"]
    # The pull request's repository shows the release as a GitHub production deployment.
    [(deployment, statuses)] = production_deployments(session_github, service)
    assert deployment["production_environment"] is True
    assert deployment["ref"] == merged.context.sha
    assert [s["state"] for s in statuses] == ["in_progress", "success"]
    assert statuses[-1]["environment_url"] == url
    assert statuses[-1]["log_url"].endswith(f"/runs/flow-run/{run.id}")
    record = service.releases()[0]
    assert record.outcome == "success"
    assert record.approved_by == "alice@example.invalid", "the key's principal, not a typed name"
    assert record.candidate_id == merged.data["release_candidate"]
    assert record.images == merged.data["images"]


def summary_rows(run_id: str) -> list[dict[str, Any]]:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    async def read() -> list[dict[str, Any]]:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]),
                    key=ArtifactFilterKey(any_=["release-summary"]),
                )
            )
        [artifact] = artifacts
        data: Any = artifact.data
        return list(json.loads(data) if isinstance(data, str) else data)

    return asyncio.run(read())


def test_no_answer_before_the_timeout_cancels_with_nothing_deployed(
    service: Service, approvers: Approvers, local_stack: Stack
) -> None:
    approvers.write_policy(local_stack.settings, "alice", approval_timeout=3)
    service.merge("v1")
    run_id = service.start_release()
    run = wait_for(run_id, final, timeout=120)
    assert run.state is not None and run.state.is_cancelled()
    assert "no approval within 3 s" in (run.state.message or "")
    assert service.releases()[0].outcome == "timed_out"


def test_a_failing_smoke_check_rolls_production_back(
    service: Service, approvers: Approvers, session_github: FakeGitHub
) -> None:
    service.merge("v1")
    good = release(service, approvers)
    url = production_url(good)
    service.merge("v2", smoke_fails=True)
    run = release(service, approvers)
    assert run.state is not None and run.state.is_failed()
    assert served(url) == "v1"
    record = service.releases()[0]
    assert record.outcome == "rolled_back"
    assert "rolled back to the previous release" in record.detail
    released, smoke_failed = production_deployments(session_github, service)
    assert [s["state"] for s in released[1]] == ["in_progress", "success"]
    assert [s["state"] for s in smoke_failed[1]] == ["in_progress", "failure"]


def test_two_releases_at_once_are_serialized(service: Service, approvers: Approvers) -> None:
    first = service.merge("v1").data["release_candidate"]
    second = service.merge("v2").data["release_candidate"]
    runs = [service.start_release(candidate_id=candidate) for candidate in (first, second)]
    for run_id in runs:
        wait_for(run_id, paused)
    for run_id in runs:
        assert approvers.answer(run_id, "alice").accepted
    windows = []
    for run_id in runs:
        run = wait_for(run_id, final)
        assert run.state is not None and run.state.is_completed()

        async def tasks(flow_run_id: str = run_id) -> list[Any]:
            async with get_client() as client:
                return await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
                )

        by_name = {t.name: t for t in asyncio.run(tasks())}
        asked = lock_asked_at(run_id)
        windows.append((by_name["deploy-production"].start_time, by_name["smoke"].end_time, asked))
    (_, a_end, _), (b_start, _, b_asked) = sorted(windows)
    # The two were in flight together: the second asked for the production lock while the
    # first still held it (deployed, not yet smoke-tested), and it deployed only after.
    assert b_asked < a_end
    assert a_end <= b_start


HOLDING = re.compile(r"holding deploy-production-\S+ \(waited (?P<waited>[0-9.]+) s\)")


def lock_asked_at(run_id: str) -> datetime:
    """When a release asked for the production deploy lock: its "holding" log line less the wait."""

    async def logs() -> list[Any]:
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)]))
            )

    for log in asyncio.run(logs()):
        found = HOLDING.search(log.message)
        if found:
            asked: datetime = log.timestamp - timedelta(seconds=float(found["waited"]))
            return asked
    raise AssertionError(f"release {run_id} never logged that it held the production lock")


def rollback_cli(stack: Stack, service: Service) -> subprocess.CompletedProcess[str]:
    """`gantry rollback` of ``service``'s production, as an on-call engineer would type it."""
    args = ["--env", "production", "--name", service.name, "--json"]
    return gantry(stack, "rollback", *args)


@pytest.mark.usefixtures("rollback_policy")
def test_gantry_rollback_puts_the_previous_release_back_in_production(
    service: Service, approvers: Approvers, local_stack: Stack
) -> None:
    service.merge("v1")
    url = production_url(release(service, approvers))
    first = service.releases()[0]
    service.merge("v2")
    release(service, approvers)
    second = service.releases()[0]
    assert served(url) == "v2"

    result = rollback_cli(local_stack, service)
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = as_json(result)
    assert outcome["pipeline"] == "release" and outcome["passed"]
    gate = outcome["stages"][1]
    assert (gate["name"], gate["status"]) == ("approval", "skipped"), "the policy allows it"
    assert served(url) == "v1"
    restored = service.releases()[0]
    assert restored.candidate_id == first.candidate_id
    assert restored.images == first.images
    assert restored.triggered_by == "gantry rollback"
    assert restored.outcome == "success"
    # A rollback restores the newest good release that production does not serve: so a second
    # one undoes the first.
    again = rollback_cli(local_stack, service)
    assert again.returncode == 0, again.stdout + again.stderr
    assert served(url) == "v2"
    assert service.releases()[0].candidate_id == second.candidate_id


@pytest.mark.usefixtures("rollback_policy")
def test_gantry_rollback_with_nothing_to_restore_exits_1_and_says_why(
    service: Service, local_stack: Stack
) -> None:
    result = rollback_cli(local_stack, service)
    assert result.returncode == 1, result.stdout + result.stderr
    outcome = as_json(result)
    assert outcome["state"] == "Cancelled"
    assert f"no earlier successful release of {service.slug}" in outcome["message"]
    assert [(s["name"], s["status"]) for s in outcome["stages"]] == [("candidate", "cancelled")]
    assert service.releases() == [], "nothing ran, so nothing is recorded"
    [row] = summary_rows(outcome["flow_run_id"])
    assert (row["stage"], row["status"]) == ("candidate", "cancelled")


def test_gantry_rollback_refuses_staging(local_stack: Stack) -> None:
    result = gantry(local_stack, "rollback", "--env", "staging", "--name", "acme/x", "--json")
    assert result.returncode == 2, "a usage error"
    assert "only --env production can be rolled back" in result.stdout + result.stderr
