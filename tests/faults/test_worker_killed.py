"""Gantry's warm worker is killed (SIGKILL) while a flow run is in flight, then a new one starts.

A throwaway Prefect server of the test's own (the worker's crash watch and zombie automation
act on it, never on the session's server), a pool of the ``gantry-warm`` type and the real
worker, ``python -m deployments.worker --type warm``, as the stack starts it. What must hold:

- the run in flight is not lost with its worker: its warm interpreter leads its own process
  group, so it keeps running, finishes and reports **Completed** itself; no retry is made;
- the worker's idle warm interpreters do not outlive it (each exits at the end of its job pipe),
  and once the run has finished no process the killed worker started is left;
- a run asked for while no worker runs waits Scheduled and runs once the new worker starts;
- every run ends in a final state, and each was executed once (the flows' ledger).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import StateType

from core.ports import free_port
from core.settings import StackSettings
from deployments.crashes import RETRY_OF
from deployments.prefect_server import PrefectServer, base_env
from deployments.warm.worker import WarmWorker
from tests.faults.bounded import await_until, wait_for
from tests.faults.fault_flows import LEDGER
from tests.plugins.prefect_server import prefect_api

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(480)]
POOL = "faults-warm"
REPO_ROOT = Path(__file__).resolve().parents[2]
FLOWS = "tests.faults.fault_flows"
WARM_SIZE = 2
PR_NUMBER = 1804
# Interpreters import Prefect in seconds, slower on a loaded 2-core machine: generous deadlines.
START_DEADLINE = 120.0
SETTLE_DEADLINE = 180.0
# An idle interpreter sees the end of its job pipe as soon as its worker is gone.
ORPHAN_DEADLINE = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Setup:
    settings: StackSettings
    home: Path
    ledger: Path
    env: dict[str, str]
    deployments: dict[str, UUID]


async def _deploy(workdir: Path) -> dict[str, UUID]:
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(
                name=POOL,
                type="gantry-warm",
                base_job_template=WarmWorker.get_default_base_job_template(),
            )
        )
        ids = {}
        for flow_name, entrypoint, name in (
            ("fault-held", "held", "held"),
            ("pr-pipeline", "pr_pipeline", "pr"),
        ):
            flow_id = await client.create_flow_from_name(flow_name)
            ids[name] = await client.create_deployment(
                flow_id=flow_id,
                name=name,
                entrypoint=f"{FLOWS}.{entrypoint}",
                work_pool_name=POOL,
                job_variables={"working_dir": str(workdir)},
            )
        return ids


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("faults-worker")
    settings = StackSettings(home=home, prefect_port=free_port())
    server = PrefectServer(settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_UI_ENABLED", "false")
        patch.setenv("PREFECT_SERVER_UI_ENABLED", "false")
        server.start(timeout=START_DEADLINE)
    ledger = home / "ledger"
    ledger.touch()
    workdir = home / "workdir"
    workdir.mkdir()
    try:
        with prefect_api(settings):
            deployments = asyncio.run(_deploy(workdir))
        env = {
            **base_env(settings),
            LEDGER: str(ledger),
            # This test's own stack: the starting worker reaps sandboxes of this id only.
            "GANTRY_HOME": str(home / "gantry"),
            "PYTHONPATH": str(REPO_ROOT),
            # Pickup through the worker's event-stream wake-up, and a poll as a fallback.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        }
        yield Setup(settings, home, ledger, env, deployments)
    finally:
        server.stop()


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    status_file: Path

    def ready_pids(self) -> set[int]:
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return set()
        return {each["pid"] for each in status["interpreters"] if each["state"] == "ready"}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_worker(setup: Setup, name: str, *options: str) -> Worker:
    status_file = setup.home / f"{name}.json"
    log = setup.home / f"{name}.log"
    argv = [sys.executable, "-m", "deployments.worker", "--pool", POOL, "--type", "warm"]
    argv += ["--name", name, "--warm-size", str(WARM_SIZE), "--preload", FLOWS]
    argv += ["--status-file", str(status_file), *options]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=setup.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Worker(proc, log, status_file)


def stop_worker(worker: Worker) -> None:
    if worker.proc.poll() is not None:
        return
    worker.proc.send_signal(signal.SIGTERM)
    try:
        worker.proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


async def is_final(client: PrefectClient, run_id: UUID) -> bool:
    state = (await client.read_flow_run(run_id)).state
    return state is not None and state.is_final()


def ledger_lines(ledger: Path) -> list[str]:
    return [line.split()[0] for line in ledger.read_text().splitlines()]


async def test_a_killed_worker_loses_no_run_runs_nothing_twice_and_leaves_no_process(
    setup: Setup, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = start_worker(setup, "first")
    second: Worker | None = None
    try:
        with prefect_api(setup.settings):
            async with get_client() as client:
                held = await client.create_flow_run_from_deployment(
                    setup.deployments["held"], parameters={"gate": str(gate)}
                )

                async def running() -> bool:
                    assert first.proc.poll() is None, first.tail()
                    run = await client.read_flow_run(held.id)
                    return run.state_type == StateType.RUNNING

                await await_until(running, "the held run is running", START_DEADLINE)
                # Every idle interpreter ready: none is being started when the worker dies.
                await asyncio.to_thread(
                    wait_for,
                    lambda: len(first.ready_pids()) == WARM_SIZE,
                    "the worker's idle interpreters are ready",
                    START_DEADLINE,
                )
                idle = first.ready_pids()
                started = children_of(first.proc.pid)
                in_flight = started - idle
                assert len(in_flight) == 1, (started, idle)
                assert idle <= started, (started, idle)

                first.proc.kill()
                first.proc.wait(10)

                # The idle interpreters exit with their worker; the run's keeps running.
                await asyncio.to_thread(
                    wait_for,
                    lambda: not any(alive(pid) for pid in idle),
                    "the killed worker's idle interpreters exit",
                    ORPHAN_DEADLINE,
                )
                assert all(alive(pid) for pid in in_flight), "the run in flight was killed"
                assert (await client.read_flow_run(held.id)).state_type == StateType.RUNNING

                # Asked for while no worker runs: it waits.
                pr = await client.create_flow_run_from_deployment(
                    setup.deployments["pr"],
                    parameters={"repository": None, "sha": "0" * 40, "pr_number": PR_NUMBER},
                )
                gate.touch()

                async def held_final() -> bool:
                    return await is_final(client, held.id)

                await await_until(held_final, "the held run finishes", SETTLE_DEADLINE)
                # Nothing the killed worker started is left.
                await asyncio.to_thread(
                    wait_for,
                    lambda: not any(alive(pid) for pid in started),
                    "every process of the killed worker exits",
                    ORPHAN_DEADLINE,
                )
                assert (await client.read_flow_run(pr.id)).state_type == StateType.SCHEDULED

                second = start_worker(setup, "second")

                async def settled() -> bool:
                    assert second is not None and second.proc.poll() is None, second.tail()
                    return await is_final(client, pr.id)

                await await_until(settled, "the waiting run ends", SETTLE_DEADLINE)
                for run_id in (held.id, pr.id):
                    run = await client.read_flow_run(run_id)
                    assert run.state is not None
                    assert run.state.name == "Completed", (run.name, run.state.name)
                # Nothing crashed, so nothing was retried.
                retries = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        tags=FlowRunFilterTags(all_=[f"{RETRY_OF}{held.id}"])
                    )
                )
                assert retries == []
    finally:
        gate.touch()
        stop_worker(first)
        if second is not None:
            stop_worker(second)

    # Executed, not only scheduled: each run once.
    assert sorted(ledger_lines(setup.ledger)) == sorted(["held", f"pr:{PR_NUMBER}"])
