"""Crash retries as several worker replicas meet them, on a real Prefect server.

Every worker replica runs the crash service (deployments/crashes.py) and each hears the same
``Crashed`` event: here several replicas are several calls of the real handler, at once and
late, against prefect.yaml's real deployments. No worker runs anything: a run is created from
its deployment, as the dispatcher creates it, and set Crashed, as the worker or the zombie
automation sets it; what the handler decides is then read back from Prefect.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Crashed

from core.settings import MERGE_DEPLOYMENT, PR_DEPLOYMENT
from deployments.crashes import RETRIED_AS, RETRY_OF, Outcome, handle_crash
from deployments.prefect_server import PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(180)]
REPLICAS = 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def prefect(deployed: PrefectServer) -> AsyncIterator[PrefectClient]:
    async with get_client() as client:
        yield client


def a_repository() -> dict[str, Any]:
    """A repository of this test alone: no other test's runs are the same work."""
    name = f"acme/crash-{uuid.uuid4().hex[:8]}"
    return {"repository": None, "repository_name": name, "repository_id": random.randrange(10**9)}


async def start(client: PrefectClient, deployment: str, **parameters: Any) -> FlowRun:
    """A run of the real deployment, as the dispatcher creates one."""
    found = await client.read_deployment_by_name(deployment)
    return await client.create_flow_run_from_deployment(found.id, parameters=parameters)


async def start_pr(client: PrefectClient, repository: dict[str, Any], number: int) -> FlowRun:
    sha = uuid.uuid4().hex + "0" * 8
    return await start(client, PR_DEPLOYMENT, sha=sha, pr_number=number, **repository)


async def start_merge(client: PrefectClient, repository: dict[str, Any], ref: str) -> FlowRun:
    sha = uuid.uuid4().hex + "0" * 8
    return await start(client, MERGE_DEPLOYMENT, sha=sha, ref=ref, **repository)


async def crash(client: PrefectClient, run: FlowRun) -> None:
    """What the worker records when the run's process is killed."""
    await client.set_flow_run_state(run.id, Crashed(message="process killed"), force=True)
    assert (await client.read_flow_run(run.id)).state_type == StateType.CRASHED


async def retries_of(client: PrefectClient, run_id: UUID) -> list[FlowRun]:
    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"{RETRY_OF}{run_id}"]))
    )


async def test_several_replicas_handling_one_crash_create_one_retry(
    prefect: PrefectClient,
) -> None:
    crashed = await start_pr(prefect, a_repository(), number=12)
    await crash(prefect, crashed)

    # Every replica hears the event at once; another hears it late (a redelivered event, a
    # replica that was restarting), after the retry exists.
    # Each call is one replica's handler, with a Prefect client of its own.
    outcomes: list[Outcome] = await asyncio.gather(
        *(handle_crash(crashed.id) for _ in range(REPLICAS))
    )
    late = await handle_crash(crashed.id)

    (retry,) = await retries_of(prefect, crashed.id)
    assert {o.retry_id for o in [*outcomes, late]} == {retry.id}
    assert retry.deployment_id == crashed.deployment_id
    assert retry.parameters == crashed.parameters
    assert retry.idempotency_key == f"gantry-retry-of-{crashed.id}"
    # The crashed run names the one retry, however many replicas tagged it.
    tags = (await prefect.read_flow_run(crashed.id)).tags
    assert [t for t in tags if t.startswith(RETRIED_AS)] == [f"{RETRIED_AS}{retry.id}"]


async def test_a_crashed_run_a_newer_run_of_the_same_pr_or_branch_replaced_is_not_retried(
    prefect: PrefectClient,
) -> None:
    repository = a_repository()
    # A PR run crashes after a newer push to the same PR was asked for.
    replaced_pr = await start_pr(prefect, repository, number=13)
    newer_pr = await start_pr(prefect, repository, number=13)
    # A merge run crashes after a newer push to the same branch was asked for.
    replaced_merge = await start_merge(prefect, repository, ref="main")
    newer_merge = await start_merge(prefect, repository, ref="main")
    # Newer runs of other work replace nothing: another PR, another branch.
    other_pr = await start_pr(prefect, repository, number=14)
    await start_pr(prefect, repository, number=15)
    other_branch = await start_merge(prefect, repository, ref="release/1.x")
    await start_merge(prefect, repository, ref="develop")
    for run in (replaced_pr, replaced_merge, other_pr, other_branch):
        await crash(prefect, run)

    for replaced, newer in ((replaced_pr, newer_pr), (replaced_merge, newer_merge)):
        outcome = await handle_crash(replaced.id)
        assert outcome.retry_id is None
        assert outcome.not_retried == f"a newer run ({newer.name}) replaced it"
        assert await retries_of(prefect, replaced.id) == []
        tags = (await prefect.read_flow_run(replaced.id)).tags
        assert not any(t.startswith(RETRIED_AS) for t in tags)

    for kept in (other_pr, other_branch):
        outcome = await handle_crash(kept.id)
        (retry,) = await retries_of(prefect, kept.id)
        assert outcome.retry_id == retry.id
        assert retry.parameters == kept.parameters
