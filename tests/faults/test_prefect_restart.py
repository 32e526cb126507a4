"""The Prefect server is killed (SIGKILL, its whole process group) while a flow run is in
flight, and started again on the same database.

A throwaway server of the test's own (its own state folder and port: the session's servers
are never touched), Prefect's stock process worker and the receiver over a real store. What
must hold: deliveries received while the server is down are answered 202 and stored, and each
runs exactly once after it is back; the run in flight finishes during the outage and ends
Completed (its final state reaches the server through the client's retries); nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect import Flow, flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import StateType
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectAlreadyExists

from core.ports import free_port
from core.settings import StackSettings
from deployments.prefect_server import PrefectServer, base_env, venv_bin
from tests.faults.bounded import await_until, wait_for
from tests.faults.fault_flows import LEDGER
from tests.plugins.prefect_server import prefect_api
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver, receiver_settings

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(420)]
POOL = "faults"
REPO_ROOT = Path(__file__).resolve().parents[2]
FLOWS = "tests/faults/fault_flows.py"
URL_PATH = "/webhooks/github"
PR_NUMBERS = (1801, 1802, 1803)
# A flow-run process starts in seconds, slower on a loaded 2-core machine: generous deadlines.
START_DEADLINE = 120.0
SETTLE_DEADLINE = 180.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class OwnPrefect:
    settings: StackSettings
    server: PrefectServer
    ledger: Path


def _deploy() -> None:
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
    for entrypoint, name in (("pr_pipeline", "pr"), ("held", "held")):
        remote = flow.from_source(source=str(REPO_ROOT), entrypoint=f"{FLOWS}:{entrypoint}")
        # Called without an event loop, from_source returns the flow itself.
        assert isinstance(remote, Flow)
        remote.deploy(
            name=name, work_pool_name=POOL, build=False, push=False, print_next_steps=False
        )


@pytest.fixture(scope="module")
def own_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPrefect]:
    home = tmp_path_factory.mktemp("faults-prefect")
    settings = StackSettings(home=home, prefect_port=free_port())
    server = PrefectServer(settings)
    with pytest.MonkeyPatch.context() as patch:
        # Nobody looks at this server's UI: its start (and restart) skips preparing it.
        patch.setenv("PREFECT_SERVER_UI_ENABLED", "false")
        server.start(timeout=START_DEADLINE)
    ledger = home / "ledger"
    ledger.touch()
    try:
        with prefect_api(settings):
            _deploy()
        env = {**base_env(settings), LEDGER: str(ledger)}
        with (home / "worker.log").open("w") as log:
            worker = subprocess.Popen(
                [venv_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            yield OwnPrefect(settings, server, ledger)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
    finally:
        server.stop()


def kill_server(server: PrefectServer) -> None:
    pid = server.process.pid()
    assert pid is not None, "the throwaway Prefect server is not running"
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not server.healthy(timeout=1), "the killed server stops answering", 30)


def restart_server(server: PrefectServer) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_SERVER_UI_ENABLED", "false")
        server.start(timeout=START_DEADLINE)


async def state_of(client: PrefectClient, run_id: UUID) -> StateType | None:
    return (await client.read_flow_run(run_id)).state_type


async def is_final(client: PrefectClient, run_id: UUID) -> bool:
    state = (await client.read_flow_run(run_id)).state
    return state is not None and state.is_final()


def ledger_lines(ledger: Path) -> list[str]:
    return [line.split()[0] for line in ledger.read_text().splitlines()]


async def test_deliveries_during_a_prefect_restart_run_once_and_the_run_in_flight_completes(
    own_prefect: OwnPrefect, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    ids = {number: payloads.new_delivery_id() for number in PR_NUMBERS}
    with prefect_api(own_prefect.settings):
        async with get_client() as client:
            in_flight = await arun_deployment(
                "fault-held/held", parameters={"gate": str(gate)}, timeout=0, client=client
            )

            async def running() -> bool:
                return await state_of(client, in_flight.id) == StateType.RUNNING

            await await_until(running, "the held run is running", START_DEADLINE)

        with ServedReceiver(receiver_settings(tmp_path)) as served:
            async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
                await asyncio.to_thread(kill_server, own_prefect.server)
                try:
                    for number, delivery_id in ids.items():
                        body, headers = payloads.signed(
                            "pull_request",
                            payloads.pull_request(number=number),
                            delivery_id=delivery_id,
                        )
                        response = await http.post(URL_PATH, content=body, headers=headers)
                        # What GitHub sees while Prefect is down: acknowledged, durably.
                        assert response.status_code == 202
                        assert response.json()["status"] == "accepted"
                        stored = served.store.get(delivery_id)
                        assert stored is not None and stored.status == "pending"
                    # The run in flight finishes while the server is down.
                    gate.touch()
                    await asyncio.sleep(1)
                finally:
                    await asyncio.to_thread(restart_server, own_prefect.server)

                def all_dispatched() -> bool:
                    found = [served.store.get(d) for d in ids.values()]
                    return all(f is not None and f.status == "dispatched" for f in found)

                await asyncio.to_thread(
                    wait_for, all_dispatched, "every stored delivery dispatched", SETTLE_DEADLINE
                )

        async with get_client() as client:
            run_ids: list[UUID] = [in_flight.id]
            for delivery_id in ids.values():
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        tags=FlowRunFilterTags(all_=[f"delivery:{delivery_id}"])
                    )
                )
                assert len(runs) == 1, f"delivery {delivery_id} made {len(runs)} flow runs"
                run_ids.append(runs[0].id)

            async def settled() -> bool:
                return all([await is_final(client, run_id) for run_id in run_ids])

            await await_until(settled, "every run reaches a final state", SETTLE_DEADLINE)
            for run_id in run_ids:
                run = await client.read_flow_run(run_id)
                assert run.state is not None
                assert run.state.name == "Completed", (run.name, run.state.name)

    # Executed, not only created: each delivery's run and the held run ran exactly once.
    executed = ledger_lines(own_prefect.ledger)
    assert sorted(executed) == sorted(["held", *(f"pr:{n}" for n in PR_NUMBERS)])
