"""A re-run button's delivery starts exactly one new run of the ``pr`` deployment.

On the local stack, which applies prefect.yaml (the real pipelines) and runs the receiver, its
dispatcher process and a worker: a pull request's run finishes, then a signed ``check_run``
``rerequested`` delivery for one of its checks makes one more run of the same commit, and the
same delivery again (GitHub's redelivery keeps the id) makes none. The same through the
receiver's own dispatcher against prefect.yaml's deployments on a plain Prefect server (no
worker): a Scheduled run of the real ``pr`` deployment, with parameters its flow binds.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse

from deployments.prefect_server import PrefectServer
from deployments.stack import Stack
from tests.plugins.deadlines import wait_for
from tests.plugins.gitrepo import GitRepo, gantry_toml
from tests.plugins.stack import WEBHOOK_SECRET
from tests.webhooks import payloads
from tests.webhooks.served import (
    ServedReceiver,
    bound_by_the_real_flow,
    receiver_settings,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PY = sys.executable
NUMBER = 42


def post(stack: Stack, event: str, payload: dict[str, Any], delivery_id: str) -> httpx.Response:
    return post_to(stack.settings.webhook_url, event, payload, delivery_id, WEBHOOK_SECRET)


def post_to(
    url: str, event: str, payload: dict[str, Any], delivery_id: str, secret: str
) -> httpx.Response:
    body, headers = payloads.signed(event, payload, delivery_id=delivery_id, secret=secret)
    return httpx.post(url, content=body, headers=headers, timeout=10)


def runs_tagged(*tags: str) -> list[FlowRun]:
    async def read() -> list[FlowRun]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=list(tags)))
            )

    return asyncio.run(read())


def deployment_of(run: FlowRun) -> DeploymentResponse:
    async def read() -> DeploymentResponse:
        assert run.deployment_id is not None
        async with get_client() as client:
            return await client.read_deployment(run.deployment_id)

    return asyncio.run(read())


def deployment_name(run: FlowRun) -> str:
    return deployment_of(run).name


def the_run_of(delivery_id: str, timeout: float = 60) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = runs_tagged(f"delivery:{delivery_id}")
        if runs:
            (run,) = runs
            return run
        time.sleep(0.3)
    raise AssertionError(f"delivery {delivery_id} started no run")


def finished(run: FlowRun, timeout: float = 300) -> FlowRun:
    async def read() -> FlowRun:
        async with get_client() as client:
            return await client.read_flow_run(run.id)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = asyncio.run(read())
        if current.state is not None and current.state.is_final():
            return current
        time.sleep(0.5)
    raise AssertionError(f"run {run.name} did not finish")


def test_a_rerequested_check_starts_exactly_one_new_run_of_the_pr_deployment(
    local_stack: Stack,
) -> None:
    name = f"acme/rerun-{uuid.uuid4().hex[:6]}"
    # Runs clone owner/name from the stack's Git host, never from the payload.
    repo = GitRepo(local_stack.settings.state_dir / "git" / name)
    sha = repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "print('ok')"])})
    repository = payloads.repository(name)

    opened = payloads.pull_request(number=NUMBER, sha=sha, head_repo=name)
    opened["repository"] = repository
    opened["pull_request"]["base"]["repo"] = repository
    first_delivery = payloads.new_delivery_id()
    assert post(local_stack, "pull_request", opened, first_delivery).status_code == 202
    first = finished(the_run_of(first_delivery))
    assert first.state is not None and first.state.is_completed()

    # The re-run button of the check that run reported.
    rerequest = payloads.check_run(
        external_id=f"pr:{NUMBER}:{first.id}",
        sha=sha,
        pull_requests=[payloads.check_pull_request(number=NUMBER, sha=sha)],
    )
    rerequest["repository"] = repository
    delivery_id = payloads.new_delivery_id()
    response = post(local_stack, "check_run", rerequest, delivery_id)
    assert response.status_code == 202 and response.json()["pipeline"] == "pr"
    rerun = the_run_of(delivery_id)
    again = post(local_stack, "check_run", rerequest, delivery_id)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"

    assert rerun.id != first.id
    assert deployment_name(rerun) == "pr"
    assert rerun.name == f"pr-{NUMBER}-{sha[:7]}-rerun"
    assert {"rerun", f"pr:{NUMBER}", f"repo:{name}"} <= set(rerun.tags)
    assert rerun.parameters["sha"] == sha and rerun.parameters["pr_number"] == NUMBER
    assert rerun.parameters["fork"] is False
    done = finished(rerun)
    assert done.state is not None and done.state.is_completed()

    # Time for a second dispatch, were there one: still the original and one re-run.
    time.sleep(2)
    assert [r.id for r in runs_tagged(f"delivery:{delivery_id}")] == [rerun.id]
    assert {r.id for r in runs_tagged(f"pr:{NUMBER}", f"repo:{name}")} == {first.id, rerun.id}


def test_a_rerequested_check_makes_one_scheduled_run_through_the_receivers_dispatcher(
    deployed: PrefectServer, tmp_path: Path
) -> None:
    rerequest = payloads.check_run(external_id=f"pr:{NUMBER}:{payloads.FLOW_RUN_ID}")
    delivery_id = payloads.new_delivery_id()
    with ServedReceiver(receiver_settings(tmp_path)) as served:
        url = served.url + "/webhooks/github"
        first = post_to(url, "check_run", rerequest, delivery_id, payloads.SECRET)
        assert first.status_code == 202 and first.json()["pipeline"] == "pr"

        def dispatched() -> bool:
            found = served.store.get(delivery_id)
            return found is not None and found.status == "dispatched"

        wait_for("the rerequest's run", dispatched, 60)
        again = post_to(url, "check_run", rerequest, delivery_id, payloads.SECRET)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        time.sleep(1)  # a second dispatch, were there one, has had its chance
        recorded = served.store.get(delivery_id)
    (run,) = runs_tagged(f"delivery:{delivery_id}")
    deployment = deployment_of(run)
    assert (deployment.name, deployment.entrypoint) == ("pr", "flows/pipelines/pr.py:pr_pipeline")
    assert deployment.enforce_parameter_schema is True
    assert run.state_type == StateType.SCHEDULED
    assert run.name == f"pr-{NUMBER}-{payloads.SHA[:7]}-rerun"
    assert {"rerun", f"pr:{NUMBER}", "repo:acme/api"} <= set(run.tags)
    assert run.idempotency_key == delivery_id
    assert recorded is not None
    # The check run's commit and PR, as a pull_request delivery would have started them.
    assert run.parameters == {
        "repository": None,
        "sha": payloads.SHA,
        "pr_number": NUMBER,
        "head_ref": "feature/x",
        "fork": False,
        "repository_name": "acme/api",
        "repository_id": payloads.REPOSITORY_ID,
        "received_at": recorded.received_at.isoformat(),
    }
    bound_by_the_real_flow(deployment, run.parameters)
