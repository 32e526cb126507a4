"""The warm worker (``gantry-warm``) against a real Prefect server, as a real worker process.

Runs are tiny flows (tests/deployments/warm_flows.py) deployed to a pool of this worker type;
the worker keeps one warm interpreter, which has preloaded that module. Whether a run went warm
is read from outside: its process id is one the worker listed as a warm interpreter before the
run was created.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deployments.prefect_server import PrefectServer

PROJECT_DIR = Path(__file__).resolve().parents[2]
FLOWS = "tests.deployments.warm_flows"
RUN_DEADLINE = 120.0
# The worker's regular poll: far beyond any deadline here.
POLL_SECONDS = 3600
FOLLOWING = "following Prefect's event stream for work pool"

pytestmark = pytest.mark.slow


@dataclass
class WarmWorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    status_file: Path
    workdir: Path
    deployments: dict[str, uuid.UUID]

    def status(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {"interpreters": []}
        return loaded

    def ready_pids(self) -> set[int]:
        return {each["pid"] for each in self.status()["interpreters"] if each["state"] == "ready"}

    def wait_ready(self, excluding: set[int] = frozenset(), timeout: float = 90) -> set[int]:  # type: ignore[assignment]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            ready = self.ready_pids() - excluding
            if ready:
                return ready
            time.sleep(0.2)
        raise AssertionError(f"no warm interpreter got ready:\n{self.log.read_text()[-3000:]}")

    def wait_logged(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if text in self.log.read_text():
                return
            time.sleep(0.2)
        raise AssertionError(f"the worker never logged {text!r}:\n{self.log.read_text()[-3000:]}")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def _create(pool: str, workdir: Path) -> dict[str, uuid.UUID]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from deployments.warm.worker import WarmWorker

    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="gantry-warm",
                base_job_template=WarmWorker.get_default_base_job_template(),
            )
        )
        ids = {}
        for name in ("observe", "fail", "sleep"):
            flow_id = await client.create_flow_from_name(f"warm-{name}")
            ids[name] = await client.create_deployment(
                flow_id=flow_id,
                name=f"{pool}-{name}",
                entrypoint=f"{FLOWS}.{name}",
                work_pool_name=pool,
                job_variables={"working_dir": str(workdir)},
            )
        return ids


@pytest.fixture(scope="module")
def warm_worker(
    prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WarmWorkerProcess]:
    from tests.plugins.prefect_server import prefect_api

    tmp = tmp_path_factory.mktemp("warm-worker")
    workdir = tmp / "workdir"
    workdir.mkdir()
    pool = f"warm-{uuid.uuid4().hex[:8]}"
    with prefect_api(prefect_server.settings):
        deployments = asyncio.run(_create(pool, workdir))
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_API_URL": prefect_server.settings.prefect_api_url,
            "PREFECT_API_AUTH_STRING": prefect_server.settings.api_auth_string(),
            "PREFECT_HOME": str(tmp / "prefect-home"),
            # No poll within the tests' deadlines after the first: every pickup is the
            # event stream's wake-up.
            "PREFECT_WORKER_QUERY_SECONDS": str(POLL_SECONDS),
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "GANTRY_HOME": str(tmp / "gantry-home"),
            # Cold starts (python -m prefect.engine in the run's folder) import the flows too.
            "PYTHONPATH": str(PROJECT_DIR),
        }
    )
    status_file = tmp / "warm-pool.json"
    argv = [sys.executable, "-m", "deployments.worker", "--type", "warm", "--pool", pool]
    argv += ["--warm-size", "1", "--preload", FLOWS, "--status-file", str(status_file)]
    log = tmp / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WarmWorkerProcess(proc, log, status_file, workdir, deployments)
    try:
        worker.wait_ready()
        worker.wait_logged(FOLLOWING)
        yield worker
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _run(deployment: uuid.UUID, parameters: dict[str, Any]) -> uuid.UUID:
    from prefect.client.orchestration import get_client

    async def create() -> uuid.UUID:
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(deployment, parameters=parameters)
            return run.id

    return asyncio.run(create())


def _state(flow_run_id: uuid.UUID) -> Any:
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state

    return asyncio.run(read())


def _wait_final(flow_run_id: uuid.UUID, worker: WarmWorkerProcess) -> Any:
    deadline = time.monotonic() + RUN_DEADLINE
    while time.monotonic() < deadline:
        state = _state(flow_run_id)
        if state is not None and state.is_final():
            return state
        time.sleep(0.3)
    raise AssertionError(f"run {flow_run_id} did not end:\n{worker.log.read_text()[-3000:]}")


def _report(path: Path, worker: WarmWorkerProcess) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_DEADLINE
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            seen: dict[str, Any] = json.loads(path.read_text())
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the flow never reported:\n{worker.log.read_text()[-3000:]}")


def _observe(
    worker: WarmWorkerProcess, tmp_path: Path, token: str
) -> tuple[dict[str, Any], set[int]]:
    """One run of the observing flow: what it saw, and the warm pids listed before it."""
    warm = worker.wait_ready()
    report = tmp_path / f"{token}.json"
    run_id = _run(worker.deployments["observe"], {"report": str(report), "token": token})
    state = _wait_final(run_id, worker)
    assert state.is_completed(), state
    return json.loads(report.read_text()), warm


def test_two_warm_runs_share_no_globals_environment_or_folder(
    warm_worker: WarmWorkerProcess, tmp_path: Path
) -> None:
    first, warm_before_first = _observe(warm_worker, tmp_path, "first")
    second, warm_before_second = _observe(warm_worker, tmp_path, "second")

    # Both ran in interpreters that were warm before their run existed, and not the same one.
    assert first["pid"] in warm_before_first
    assert second["pid"] in warm_before_second
    assert first["pid"] != second["pid"]
    # What the first run left (a module global, an environment variable) the second never sees.
    for seen in (first, second):
        assert seen["global"] is None
        assert seen["env"] is None
        # Each starts in the configured working folder.
        assert Path(seen["cwd"]).resolve() == warm_worker.workdir.resolve()


def test_a_warm_interpreter_killed_while_idle_is_replaced_and_the_next_run_is_warm(
    warm_worker: WarmWorkerProcess, tmp_path: Path
) -> None:
    (victim,) = warm_worker.wait_ready()
    os.kill(victim, signal.SIGKILL)
    replacement = warm_worker.wait_ready(excluding={victim})
    assert victim not in replacement
    assert "while idle; starting a replacement" in warm_worker.log.read_text()

    seen, warm = _observe(warm_worker, tmp_path, "after-crash")
    assert seen["pid"] in warm
    assert seen["pid"] != victim


def test_a_new_run_wakes_the_worker_instead_of_waiting_for_its_poll(
    warm_worker: WarmWorkerProcess, tmp_path: Path
) -> None:
    # The worker polled when it started, before this run existed, and polls next in an hour:
    # only the Scheduled event it follows can make it pick the run up.
    seen, warm = _observe(warm_worker, tmp_path, "woken")
    assert seen["pid"] in warm
    assert POLL_SECONDS > 10 * RUN_DEADLINE


def test_a_failing_flow_ends_failed_not_crashed(warm_worker: WarmWorkerProcess) -> None:
    warm_worker.wait_ready()
    state = _wait_final(_run(warm_worker.deployments["fail"], {}), warm_worker)
    assert state.is_failed(), state
    assert state.type.value == "FAILED"


def test_cancelling_a_run_kills_its_interpreters_process_group(
    warm_worker: WarmWorkerProcess, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    warm = warm_worker.wait_ready()
    report = tmp_path / "sleep.json"
    run_id = _run(warm_worker.deployments["sleep"], {"report": str(report)})
    pids = _report(report, warm_worker)
    assert pids["pid"] in warm
    assert _alive(pids["pid"]) and _alive(pids["child"])

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelling(), force=True)

    asyncio.run(cancel())
    state = _wait_final(run_id, warm_worker)
    assert state.is_cancelled(), state
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_alive(pids["pid"]) or _alive(pids["child"])):
        time.sleep(0.2)
    # The interpreter and the process its flow started (same process group) are both gone.
    assert not _alive(pids["pid"])
    assert not _alive(pids["child"])
