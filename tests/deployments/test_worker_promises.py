"""What the README and the docs promise about Gantry's workers, each through the real code path.

- ``GANTRY_WORKER_TYPE=process`` gives the stack Prefect's process worker (README).
- Each warm interpreter logs its start-up time and memory, and ``gantry status`` shows the warm
  pool's status file beside the worker (docs/architecture.md, The worker).
- A run starts cold, and its log says why, when its command, ``warm: false`` or its environment
  requires it, even with a warm interpreter idle (docs/architecture.md, The worker).
- A paused work pool is still polled, so its heartbeat goes on (runbooks/worker-not-polling.md).

The warm worker's event-stream wake-up is tested against a running worker in
tests/deployments/test_warm_worker.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.ports import StackError, free_port
from core.settings import StackSettings
from deployments.prefect_server import PrefectServer
from deployments.stack import Stack, worker_type
from tests.fakes.dogstatsd import DogStatsdAgent
from tests.plugins.stack import as_json, gantry

PROJECT_DIR = Path(__file__).resolve().parents[2]
# Importing Prefect in a new interpreter takes seconds, more on a loaded machine.
READY_DEADLINE = 120.0
READY_LINE = re.compile(r"warm interpreter pid (\d+) ready in \d+\.\d s, RSS (\d+) MiB")


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# --- GANTRY_WORKER_TYPE (README) -----------------------------------------------------------------


def test_gantry_worker_type_process_selects_prefects_process_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.workers.process import ProcessWorker

    from deployments.warm.worker import WarmWorker
    from deployments.worker import build_worker, parse_args

    def stack_worker() -> Any:
        # `gantry up` starts `python -m deployments.worker --type <worker_type()>`.
        return build_worker(parse_args(["--pool", "gantry-local", "--type", worker_type()]))

    monkeypatch.setenv("GANTRY_WORKER_TYPE", "process")
    chosen = stack_worker()
    assert isinstance(chosen, ProcessWorker)
    assert not isinstance(chosen, WarmWorker)
    assert chosen.type == "process"

    monkeypatch.delenv("GANTRY_WORKER_TYPE")
    default = stack_worker()
    assert isinstance(default, WarmWorker)
    assert default.type == "gantry-warm"

    monkeypatch.setenv("GANTRY_WORKER_TYPE", "threads")
    with pytest.raises(StackError, match="GANTRY_WORKER_TYPE must be one of warm, process"):
        worker_type()


# --- start-up time, memory and `gantry status` (architecture.md) ---------------------------------

# The worker's part of the stack, reduced to its warm pool: the real WarmPool, logging as the
# worker does, keeping the status file where `gantry up` tells the worker to keep it.
WARM_POOL_HOST = """
import asyncio, logging, os, sys
from pathlib import Path
from deployments.warm.interpreters import WarmPool

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")

async def main() -> None:
    pool = WarmPool(1, [], logging.getLogger("worker"), Path(sys.argv[1]))
    await pool.start(dict(os.environ))
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_warm_interpreters_log_start_up_and_memory_and_gantry_status_shows_them(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    # Nothing else of this stack runs: its server port is a free one.
    settings = StackSettings(home=home, prefect_port=free_port())
    stack = Stack(settings)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    argv = [sys.executable, "-c", WARM_POOL_HOST, str(stack.warm_status_file)]
    stack.worker.start(argv, env, cwd=PROJECT_DIR)
    try:

        def ready() -> list[dict[str, Any]]:
            try:
                pool = json.loads(stack.warm_status_file.read_text())
            except (OSError, ValueError):
                return []
            return [each for each in pool["interpreters"] if each["state"] == "ready"]

        _wait(
            lambda: ready() and READY_LINE.search(stack.worker.log_file.read_text()),
            READY_DEADLINE,
            f"a ready warm interpreter:\n{stack.worker.log_file}",
        )
        (interpreter,) = ready()
        match = READY_LINE.search(stack.worker.log_file.read_text())
        assert match is not None
        # The log line names the interpreter the status file lists, with its resident memory.
        assert int(match.group(1)) == interpreter["pid"]
        # (both rounded from the same reading: to whole MiB in the log, to 0.1 in the file)
        assert abs(int(match.group(2)) - interpreter["rss_mib"]) <= 1
        assert interpreter["ready_seconds"] > 0
        assert interpreter["rss_mib"] > 0

        result = gantry(None, "status", "--json", home=home)
        worker = as_json(result)["parts"]["worker"]
        assert worker["up"] is True
        assert worker["detail"] == (
            f"pool {settings.work_pool}, 1 warm interpreters ({interpreter['rss_mib']:.0f} MiB)"
        )
    finally:
        stack.worker.stop()


# --- cold starts (architecture.md) ---------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def flow_run_log() -> Iterator[_Records]:
    """What the worker logs to a flow run's log (Prefect's ``prefect.flow_runs.worker``)."""
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    records = _Records()
    logger = logging.getLogger("prefect.flow_runs.worker")
    logger.addHandler(records)
    try:
        # No server here: the lines are read from the logger, not sent to an API.
        with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: False}):
            yield records
    finally:
        logger.removeHandler(records)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode() for part in raw.split(b"\0") if part]


SECRET_VALUE = "pnu_cold-start-secret-0123456789"
COLD_CASES: dict[str, tuple[dict[str, Any], str]] = {
    # case: (job variables, what the run's log gives as the reason)
    "command": (
        {"command": f"{sys.executable} -c 'import time; time.sleep(60)'"},
        "its job configuration sets its own command",
    ),
    "warm-false": ({"warm": False}, "its job variables ask for a cold start (warm: false)"),
    "environment": (
        {"env": {"PREFECT_API_KEY": SECRET_VALUE}},
        "its environment differs from the warm interpreters' in variables read at import: "
        "PREFECT_API_KEY",
    ),
}


@pytest.mark.parametrize("case", sorted(COLD_CASES))
def test_a_run_starts_cold_with_a_warm_interpreter_idle_and_its_log_says_why(
    case: str, tmp_path: Path
) -> None:
    from prefect.client.schemas.objects import FlowRun

    from deployments.warm.environment import job_environment
    from deployments.warm.interpreters import kill_group
    from deployments.warm.worker import WarmJobConfiguration
    from deployments.worker import GantryWarmWorker

    variables, reason = COLD_CASES[case]
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name=f"cold-{case}")

    def configuration(values: dict[str, Any]) -> WarmJobConfiguration:
        # The fields the default base job template fills from the job variables of the same
        # names; then what the worker does before each run.
        built = WarmJobConfiguration(**values)
        built.prepare_for_flow_run(flow_run)
        return built

    async def start() -> tuple[list[str], list[str]]:
        worker = GantryWarmWorker("cold-starts", warm_size=1, preload=())
        # The interpreters are warmed with what a run without job variables gets.
        await worker.interpreters.start(job_environment(configuration({}).env))
        (idle,) = worker.interpreters.idle
        job = configuration(variables)
        try:
            with flow_run_log() as log:
                process = await worker._start(flow_run, job, job_environment(job.env), tmp_path)
            try:
                # A new process, and the warm interpreter still waits for another run.
                assert process.pid != idle.pid
                assert worker.interpreters.idle == [idle]
                # /proc shows the command line once the new process has exec'd it.
                cmdline: list[str] = []
                for _ in range(100):
                    if cmdline := _cmdline(process.pid):
                        break
                    await asyncio.sleep(0.1)
            finally:
                kill_group(process.pid, signal.SIGKILL)
                await process.wait()
        finally:
            await worker.interpreters.close()
        return log.messages, cmdline

    messages, cmdline = asyncio.run(start())
    assert f"Flow run starts in a new interpreter: {reason}" in messages
    if case == "command":
        assert cmdline == [sys.executable, "-c", "import time; time.sleep(60)"]
    else:
        assert cmdline[1:] == ["-m", "prefect.engine"]
    # The log names the variable, never its value.
    assert not any(SECRET_VALUE in message for message in messages)


# --- a paused pool (runbooks/worker-not-polling.md) ----------------------------------------------


@pytest.mark.slow
def test_a_paused_pool_is_still_polled_and_each_poll_sends_a_heartbeat(
    prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.client.schemas.objects import WorkPoolStatus
    from prefect.workers.process import ProcessWorker

    from clients.metrics import Metrics, set_metrics
    from deployments.worker import GantryProcessWorker

    del prefect_server
    monkeypatch.delenv("DD_ENV", raising=False)
    pool = f"paused-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[Any], list[Any], Any]:
        async with get_client() as client:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )
            try:
                flow_id = await client.create_flow_from_name("paused-pool-flow")
                deployment = await client.create_deployment(
                    flow_id=flow_id,
                    name=pool,
                    entrypoint="tests/deployments/warm_flows.py:fail",
                    work_pool_name=pool,
                )
                await client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
                # Due now: an unpaused pool would hand it to the worker's poll.
                waiting = await client.create_flow_run_from_deployment(deployment)
                async with GantryProcessWorker(work_pool_name=pool) as worker:
                    first = await worker.get_and_submit_flow_runs()
                    second = await worker.get_and_submit_flow_runs()
                    status = worker.work_pool.status
                state = (await client.read_flow_run(waiting.id)).state
                assert state is not None and state.is_scheduled(), state
                return first, second, status
            finally:
                await client.delete_work_pool(pool)

    with DogStatsdAgent() as agent:
        set_metrics(Metrics("127.0.0.1", agent.port))
        try:
            first, second, status = asyncio.run(scenario())
            _wait(lambda: len(agent.lines) >= 2, 10, "two heartbeats")
        finally:
            set_metrics(None)
    # Each poll asked the API, which answered with no runs: the pool is paused, not dead.
    assert status == WorkPoolStatus.PAUSED
    assert first == second == []
    heartbeats = [d for d in agent.datagrams() if d.name == "gantry.worker.heartbeat"]
    assert len(heartbeats) == 2
    assert {d.tag("work_pool") for d in heartbeats} == {pool}
