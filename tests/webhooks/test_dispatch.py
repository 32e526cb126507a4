"""Deliveries become flow runs on a real Prefect server: once each, whatever arrives twice,
through an outage of the server and a restart of the receiver; PR runs supersede older ones.

The deployments are prefect.yaml's, applied as `gantry up` applies them: the real pipelines'
entrypoints and parameter schemas, enforced by Prefect when a run is created. No worker runs
them: a Scheduled run whose parameters Prefect accepted, and that the real flow binds as the
engine would at its start, is what a dispatch produces. One Prefect server serves the whole
module; the outage test stops and restarts it, so it runs last.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import SignatureMismatchError
from prefect.states import Running

from core.settings import prefect_env
from deployments.prefect_server import PrefectServer
from tests.webhooks import payloads
from tests.webhooks.served import (
    ServedReceiver,
    bound_by_the_real_flow,
    receiver_settings,
)
from webhooks.events import PipelineRequest, map_event
from webhooks.store import Delivery, DeliveryStore, SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(180)]
URL_PATH = "/webhooks/github"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def served(deployed: PrefectServer, tmp_path: Path) -> Iterator[ServedReceiver]:
    with ServedReceiver(receiver_settings(tmp_path)) as receiver:
        yield receiver


@pytest.fixture
async def http(served: ServedReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=15) as client:
        yield client


@pytest.fixture
async def prefect(deployed: PrefectServer) -> AsyncIterator[PrefectClient]:
    async with get_client() as client:
        yield client


async def post(
    http: httpx.AsyncClient, event: str, payload: dict[str, Any], delivery_id: str
) -> httpx.Response:
    body, headers = payloads.signed(event, payload, delivery_id=delivery_id)
    return await http.post(URL_PATH, content=body, headers=headers)


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def dispatched(store: DeliveryStore, delivery_id: str) -> Callable[[], bool]:
    def check() -> bool:
        found = store.get(delivery_id)
        return found is not None and found.status == "dispatched"

    return check


async def runs_tagged(client: PrefectClient, *tags: str) -> list[FlowRun]:
    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=list(tags)))
    )


async def the_run_of(client: PrefectClient, store: DeliveryStore, delivery_id: str) -> FlowRun:
    recorded = store.get(delivery_id)
    assert recorded is not None and recorded.flow_run_id is not None
    return await client.read_flow_run(UUID(recorded.flow_run_id))


async def deployment_of(client: PrefectClient, run: FlowRun) -> DeploymentResponse:
    assert run.deployment_id is not None
    return await client.read_deployment(run.deployment_id)


async def assert_a_run_of_the_real(
    client: PrefectClient, run: FlowRun, name: str, entrypoint: str
) -> None:
    """``run`` is of prefect.yaml's deployment ``name``, which Prefect checks parameters for,
    and the real flow takes every parameter it carries."""
    deployment = await deployment_of(client, run)
    assert (deployment.name, deployment.entrypoint) == (name, entrypoint)
    # prefect.yaml leaves enforcement to Prefect's default: on.
    assert deployment.enforce_parameter_schema is True
    assert run.state_type == StateType.SCHEDULED
    bound_by_the_real_flow(deployment, run.parameters)


async def test_a_pr_delivery_becomes_one_scheduled_flow_run_named_and_tagged(
    served: ServedReceiver, http: httpx.AsyncClient, prefect: PrefectClient
) -> None:
    delivery_id = payloads.new_delivery_id()
    response = await post(http, "pull_request", payloads.pull_request(number=4201), delivery_id)
    assert response.status_code == 202
    await eventually(dispatched(served.store, delivery_id))

    recorded = served.store.get(delivery_id)
    assert recorded is not None and recorded.flow_run_id is not None
    run = await prefect.read_flow_run(UUID(recorded.flow_run_id))
    await assert_a_run_of_the_real(prefect, run, "pr", "flows/pipelines/pr.py:pr_pipeline")
    assert run.name == f"pr-4201-{payloads.SHA[:7]}"
    assert {"repo:acme/api", "pr:4201", f"delivery:{delivery_id}"} <= set(run.tags)
    assert run.idempotency_key == delivery_id
    assert run.parameters == {
        "repository": None,
        "sha": payloads.SHA,
        "pr_number": 4201,
        "head_ref": "feature/x",
        "fork": False,
        "repository_name": "acme/api",
        "repository_id": payloads.REPOSITORY_ID,
        # The flow's queue time starts at the delivery's arrival, not at the run's creation.
        "received_at": recorded.received_at.isoformat(),
    }


async def test_fifty_concurrent_duplicates_make_exactly_one_flow_run(
    served: ServedReceiver, http: httpx.AsyncClient, prefect: PrefectClient
) -> None:
    delivery_id = payloads.new_delivery_id()
    responses = await asyncio.gather(
        *(post(http, "push", payloads.push(), delivery_id) for _ in range(50))
    )
    assert sorted(r.json()["status"] for r in responses) == ["accepted"] + ["duplicate"] * 49
    await eventually(dispatched(served.store, delivery_id))
    # A later redelivery of the same GUID changes nothing either.
    again = await post(http, "push", payloads.push(), delivery_id)
    assert again.json()["status"] == "duplicate"
    await asyncio.sleep(0.5)
    runs = await runs_tagged(prefect, f"delivery:{delivery_id}")
    assert len(runs) == 1
    assert runs[0].name == f"merge-main-{payloads.SHA[:7]}"


async def test_a_push_delivery_starts_the_merge_deployment_with_parameters_its_flow_takes(
    served: ServedReceiver, http: httpx.AsyncClient, prefect: PrefectClient
) -> None:
    delivery_id = payloads.new_delivery_id()
    response = await post(http, "push", payloads.push(after="9" * 40), delivery_id)
    assert response.status_code == 202
    await eventually(dispatched(served.store, delivery_id))

    run = await the_run_of(prefect, served.store, delivery_id)
    await assert_a_run_of_the_real(prefect, run, "merge", "flows/pipelines/merge.py:merge_pipeline")
    assert run.name == f"merge-main-{'9' * 7}"
    assert {"pipeline:merge", "repo:acme/api", f"delivery:{delivery_id}"} <= set(run.tags)
    recorded = served.store.get(delivery_id)
    assert recorded is not None
    assert run.parameters == {
        "repository": None,
        "sha": "9" * 40,
        "ref": "main",
        "repository_name": "acme/api",
        "repository_id": payloads.REPOSITORY_ID,
        "received_at": recorded.received_at.isoformat(),
    }


async def test_a_release_delivery_starts_the_release_deployment_with_parameters_its_flow_takes(
    served: ServedReceiver, http: httpx.AsyncClient, prefect: PrefectClient
) -> None:
    delivery_id = payloads.new_delivery_id()
    response = await post(http, "release", payloads.release(tag="v9.9.9"), delivery_id)
    assert response.status_code == 202
    await eventually(dispatched(served.store, delivery_id))

    run = await the_run_of(prefect, served.store, delivery_id)
    await assert_a_run_of_the_real(
        prefect, run, "release", "flows/pipelines/release.py:release_pipeline"
    )
    assert run.name == "release-v9-9-9"
    assert {"pipeline:release", "repo:acme/api", f"delivery:{delivery_id}"} <= set(run.tags)
    recorded = served.store.get(delivery_id)
    assert recorded is not None
    assert run.parameters == {
        "repository_name": "acme/api",
        "repository_id": payloads.REPOSITORY_ID,
        # The newest candidate: a GitHub release names a tag, not a candidate.
        "candidate_id": None,
        "tag": "v9.9.9",
        "triggered_by": "github:releaser",
        "received_at": recorded.received_at.isoformat(),
    }


def drifted(event: str, payload: dict[str, Any], *, drop: str = "", **changes: Any) -> Delivery:
    """A stored delivery whose run request the receiver made from ``payload``, then changed the
    way a receiver out of step with the pipelines would: ``drop`` one parameter, ``changes``
    set (or add) others."""
    delivery_id = payloads.new_delivery_id()
    request = map_event(event, delivery_id, payload, repositories=payloads.ALLOWLIST)
    assert isinstance(request, PipelineRequest)
    parameters = {k: v for k, v in request.parameters.items() if k != drop} | changes
    return Delivery(
        id=delivery_id,
        event=event,
        payload=json.dumps(payload),
        request=request.model_copy(update={"parameters": parameters}),
    )


async def test_parameters_the_real_flows_do_not_take_are_refused(
    deployed: PrefectServer, tmp_path: Path, prefect: PrefectClient
) -> None:
    """A receiver out of step with the pipelines is caught here, not in production. Prefect
    refuses a run whose parameters break the real flow's schema (a wrong type, a required one
    missing); a name the flow does not take passes Prefect's schema, which allows other
    properties, and the real flow refuses to bind it, as the engine would at the run's start."""
    store = SqliteStore(tmp_path / "webhooks.db")
    mistyped = drifted("pull_request", payloads.pull_request(number=710), sha=123)
    missing = drifted("push", payloads.push(), drop="sha")
    renamed = drifted("release", payloads.release(tag="v7.1.0"), drop="tag", release_tag="v7.1.0")
    for delivery in (mistyped, missing, renamed):
        assert store.add(delivery)

    def settled() -> bool:
        return all(
            getattr(store.get(d.id), "status", None) in ("failed", "dispatched")
            for d in (mistyped, missing, renamed)
        )

    with ServedReceiver(receiver_settings(tmp_path), SqliteStore(tmp_path / "webhooks.db")):
        await eventually(settled)
    for refused in (mistyped, missing):
        recorded = store.get(refused.id)
        assert recorded is not None and recorded.status == "failed"
        # Prefect's answer to parameters that break the deployment's schema.
        assert recorded.last_error is not None and "409 Conflict" in recorded.last_error
        assert await runs_tagged(prefect, f"delivery:{refused.id}") == []

    run = await the_run_of(prefect, store, renamed.id)
    deployment = await deployment_of(prefect, run)
    assert deployment.name == "release"
    with pytest.raises(SignatureMismatchError, match="release_tag"):
        bound_by_the_real_flow(deployment, run.parameters)


INJECTIONS = [
    'zzz";echo${IFS}"hello";#',
    "$(id)",
    "a\nb\r\nc",
    "`touch {marker}`",
    "$(touch {marker})",
    ";touch {marker};",
]


async def test_hostile_branch_names_arrive_as_inert_parameters(
    served: ServedReceiver, http: httpx.AsyncClient, prefect: PrefectClient, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    for number, template in enumerate(INJECTIONS, start=900):
        ref = template.replace("{marker}", str(marker))
        delivery_id = payloads.new_delivery_id()
        payload = payloads.pull_request(number=number, head_ref=ref)
        await post(http, "pull_request", payload, delivery_id)
        await eventually(dispatched(served.store, delivery_id))
        (run,) = await runs_tagged(prefect, f"delivery:{delivery_id}")
        assert run.parameters["head_ref"] == ref
        assert run.name == f"pr-{number}-{payloads.SHA[:7]}"
    assert not marker.exists()
    assert not Path("hello").exists()


async def test_a_newer_push_cancels_the_older_pr_runs_but_not_merge_runs(
    served: ServedReceiver, http: httpx.AsyncClient, prefect: PrefectClient
) -> None:
    async def deliver(event: str, payload: dict[str, Any]) -> FlowRun:
        delivery_id = payloads.new_delivery_id()
        assert (await post(http, event, payload, delivery_id)).status_code == 202
        await eventually(dispatched(served.store, delivery_id))
        recorded = served.store.get(delivery_id)
        assert recorded is not None and recorded.flow_run_id is not None
        return await prefect.read_flow_run(UUID(recorded.flow_run_id))

    merge = await deliver("push", payloads.push(after="c" * 40))
    other_pr = await deliver("pull_request", payloads.pull_request(number=78, sha="d" * 40))
    waiting = await deliver("pull_request", payloads.pull_request(number=77, sha="e" * 40))
    running = await deliver(
        "pull_request", payloads.pull_request(action="synchronize", number=77, sha="f" * 40)
    )
    await prefect.set_flow_run_state(running.id, Running(), force=True)

    newest = await deliver(
        "pull_request", payloads.pull_request(action="synchronize", number=77, sha=payloads.SHA2)
    )

    async def state_of(run: FlowRun) -> StateType | None:
        return (await prefect.read_flow_run(run.id)).state_type

    assert await state_of(waiting) == StateType.CANCELLED
    assert await state_of(running) == StateType.CANCELLING
    assert await state_of(newest) == StateType.SCHEDULED
    assert await state_of(other_pr) == StateType.SCHEDULED
    assert await state_of(merge) == StateType.SCHEDULED


async def test_a_rerun_of_an_older_commit_cancels_no_newer_run(
    served: ServedReceiver, http: httpx.AsyncClient, prefect: PrefectClient
) -> None:
    pushed = payloads.new_delivery_id()
    newest = payloads.pull_request(action="synchronize", number=81, sha="a" * 40)
    assert (await post(http, "pull_request", newest, pushed)).status_code == 202
    await eventually(dispatched(served.store, pushed))
    (running,) = await runs_tagged(prefect, f"delivery:{pushed}")
    await prefect.set_flow_run_state(running.id, Running(), force=True)

    # The re-run button of the PR's older commit (its check run names PR 81).
    rerun = payloads.new_delivery_id()
    older = payloads.check_run(
        external_id=f"pr:81:{payloads.FLOW_RUN_ID}",
        sha="b" * 40,
        pull_requests=[payloads.check_pull_request(number=81, sha="b" * 40)],
    )
    assert (await post(http, "check_run", older, rerun)).status_code == 202
    await eventually(dispatched(served.store, rerun))
    (again,) = await runs_tagged(prefect, f"delivery:{rerun}")
    assert "rerun" in again.tags and again.parameters["sha"] == "b" * 40
    assert (await prefect.read_flow_run(running.id)).state_type == StateType.RUNNING


def attempts(store: DeliveryStore, delivery_id: str) -> int:
    found = store.get(delivery_id)
    return found.attempts if found else 0


def pending_delivery(delivery_id: str, number: int) -> Delivery:
    payload = payloads.pull_request(number=number)
    request = map_event("pull_request", delivery_id, payload, repositories=payloads.ALLOWLIST)
    assert isinstance(request, PipelineRequest)
    return Delivery(
        id=delivery_id, event="pull_request", payload=json.dumps(payload), request=request
    )


async def test_a_restarted_receiver_dispatches_what_was_left_pending(
    deployed: PrefectServer, tmp_path: Path, prefect: PrefectClient
) -> None:
    store = SqliteStore(tmp_path / "webhooks.db")
    left = [payloads.new_delivery_id() for _ in range(3)]
    for number, delivery_id in enumerate(left, start=600):
        assert store.add(pending_delivery(delivery_id, number))

    with ServedReceiver(receiver_settings(tmp_path), SqliteStore(tmp_path / "webhooks.db")):
        await eventually(lambda: all(dispatched(store, d)() for d in left))
    for delivery_id in left:
        assert len(await runs_tagged(prefect, f"delivery:{delivery_id}")) == 1


async def test_a_refused_delivery_fails_and_a_missing_deployment_blocks_nothing(
    deployed: PrefectServer, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "webhooks.db")
    now = datetime.now(UTC)

    def variant(number: int, minutes_ago: int, **changes: Any) -> Delivery:
        base = pending_delivery(payloads.new_delivery_id(), number)
        assert base.request is not None
        request = base.request.model_copy(update=changes)
        received = now - timedelta(minutes=minutes_ago)
        return base.model_copy(update={"request": request, "received_at": received})

    missing = variant(700, 3, deployment="no-such-flow/none")
    pr = pending_delivery(payloads.new_delivery_id(), 702).request
    assert pr is not None
    refused = variant(701, 2, parameters={**pr.parameters, "sha": 123})
    fine = variant(702, 1)
    for delivery in (missing, refused, fine):
        assert store.add(delivery)

    with ServedReceiver(receiver_settings(tmp_path), SqliteStore(tmp_path / "webhooks.db")):
        await eventually(dispatched(store, fine.id))
        await eventually(lambda: getattr(store.get(refused.id), "status", None) == "failed")
    kept = store.get(missing.id)
    assert kept is not None and kept.status == "pending" and kept.attempts >= 1
    assert kept.last_error is not None and "ObjectNotFound" in kept.last_error
    failed = store.get(refused.id)
    assert failed is not None and failed.last_error


async def test_the_dispatcher_process_dispatches_what_a_receiver_without_one_stored(
    deployed: PrefectServer, tmp_path: Path, prefect: PrefectClient
) -> None:
    settings = receiver_settings(tmp_path).model_copy(update={"webhook_dispatcher": "process"})
    delivery_id = payloads.new_delivery_id()
    with ServedReceiver(settings) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=15) as http:
            payload = payloads.pull_request(number=700)
            assert (await post(http, "pull_request", payload, delivery_id)).status_code == 202
        # Time enough for a dispatcher thread, were one running: the receiver only records.
        await asyncio.sleep(2)
        stored = served.store.get(delivery_id)
        assert stored is not None and stored.status == "pending"

    env = {
        **os.environ,
        **prefect_env(deployed.settings),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "GANTRY_HOME": str(tmp_path),
    }
    env.pop("GANTRY_WEBHOOK_STORE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhooks.dispatch_process",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        store = SqliteStore(tmp_path / "webhooks.db")
        await eventually(dispatched(store, delivery_id), timeout=60)
        # Below the receiver's CPU priority: field 19 of /proc/PID/stat is the nice value.
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[16]) == 10
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    assert len(await runs_tagged(prefect, f"delivery:{delivery_id}")) == 1


async def test_deliveries_during_a_prefect_outage_are_kept_and_dispatched_once_after(
    deployed: PrefectServer, tmp_path: Path
) -> None:
    ids = [payloads.new_delivery_id() for _ in range(5)]
    with ServedReceiver(receiver_settings(tmp_path)) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=15) as http:
            await asyncio.to_thread(deployed.stop)
            try:
                for number, delivery_id in enumerate(ids, start=500):
                    payload = payloads.pull_request(number=number)
                    response = await post(http, "pull_request", payload, delivery_id)
                    assert response.status_code == 202
                ready = await http.get("/readyz")
                # Still ready: the store keeps what arrives; Prefect's state is information.
                assert ready.status_code == 200 and ready.json()["prefect"] == "unreachable"
                # The dispatcher keeps trying (and backing off) while the server is down;
                # each pass stops at the oldest delivery, which counts the attempts.
                await eventually(lambda: attempts(served.store, ids[0]) >= 2)
                assert {d.id for d in served.store.pending()} == set(ids)
            finally:
                await asyncio.to_thread(deployed.start)
            await eventually(lambda: all(dispatched(served.store, d)() for d in ids), 60)
            assert (await http.get("/readyz")).status_code == 200

    async with get_client() as prefect:
        for delivery_id in ids:
            assert len(await runs_tagged(prefect, f"delivery:{delivery_id}")) == 1
