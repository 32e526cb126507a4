"""The ``gantry-warm`` worker type: each flow run starts in an interpreter that has already
imported Prefect and the pipelines, woken by Prefect's event stream rather than a poll.

Built on Prefect's public worker extension points: a ``BaseWorker`` with its own ``type``, job
configuration and variables (so the work pool's base job template and the UI show them).
A run whose environment differs from the warm interpreters' in what Prefect or Python read at
import (``deployments/warm/environment.py``), whose job configuration sets its own command, or
whose job variables say ``warm: false`` starts cold, as ``python -m prefect.engine``, and its
log says why. Either way the run's process leads its own process group: cancelling it kills
the group.

``WarmWorker`` is abstract here (``abc.ABC`` among its bases keeps Prefect from registering
it); ``deployments/worker.py`` registers the concrete class, with the heartbeat metric.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio.abc
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import InfrastructureNotFound, ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Cancelled
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field, PrivateAttr

from deployments.crashes import reap_steps
from deployments.warm import events
from deployments.warm.environment import job_environment
from deployments.warm.interpreters import WarmPool, kill_group

if TYPE_CHECKING:
    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse

WORKER_TYPE = "gantry-warm"
# What the pipelines' flow runs import: each warm interpreter has imported them already.
PIPELINE_MODULES = ("flows.pipelines.pr", "flows.pipelines.merge", "flows.pipelines.release")
DEFAULT_WARM_SIZE = 2
# A Cancelling run's process group gets SIGTERM, then SIGKILL after this long.
CANCEL_GRACE_SECONDS = 10.0
# Cancelling runs are also looked for by polling, in case the event stream missed one.
CANCEL_POLL_SECONDS = 5.0


class WarmJobConfiguration(BaseJobConfiguration):
    working_dir: Path | None = Field(default=None)
    warm: bool = Field(default=True)

    # Whether the work pool or deployment set a command (then the run starts cold with it).
    _own_command: bool = PrivateAttr(default=False)

    @property
    def own_command(self) -> bool:
        return self._own_command

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        # Prefect fills in a default command, so whether one was given is noted first.
        self._own_command = self.command is not None
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )
        # As Prefect's process worker: the run inherits the worker's environment.
        self.env = {**os.environ, **self.env}


class WarmVariables(BaseVariables):
    working_dir: Path | None = Field(
        default=None,
        title="Working Directory",
        description=(
            "Folder the flow run starts in; by default a new temporary folder, removed after "
            "the run."
        ),
    )
    warm: bool = Field(
        default=True,
        title="Warm start",
        description=(
            "Start the flow run in an interpreter that has already imported Prefect and the "
            "flows. False starts a new `python -m prefect.engine` process."
        ),
    )


class WarmWorkerResult(BaseWorkerResult):
    """The exit code of a flow run's process and its pid."""


@contextlib.contextmanager
def working_dir(configured: Path | None) -> Iterator[Path]:
    if configured is not None:
        yield configured
        return
    with tempfile.TemporaryDirectory(suffix="prefect") as folder:
        yield Path(folder)


class WarmWorker(BaseWorker[WarmJobConfiguration, WarmVariables, WarmWorkerResult], abc.ABC):
    type = WORKER_TYPE
    job_configuration = WarmJobConfiguration
    job_configuration_variables = WarmVariables

    def __init__(
        self,
        work_pool_name: str,
        *,
        warm_size: int = DEFAULT_WARM_SIZE,
        preload: Sequence[str] = PIPELINE_MODULES,
        status_file: Path | None = None,
        cancel_grace_seconds: float = CANCEL_GRACE_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(work_pool_name, **kwargs)
        self.pool_name = work_pool_name
        self.interpreters = WarmPool(warm_size, preload, self.get_logger(), status_file)
        self.cancel_grace_seconds = cancel_grace_seconds
        # Flow runs in flight: their process (each the leader of its own process group).
        self.processes: dict[UUID, asyncio.subprocess.Process] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    @classmethod
    def get_description(cls) -> str:
        return (
            "Gantry's warm worker: flow runs start in interpreters that have already imported "
            "Prefect and the pipelines, each interpreter used once."
        )

    def get_logger(self) -> Any:
        from prefect.logging.loggers import get_worker_logger

        return get_worker_logger(self)

    # -- lifecycle ------------------------------------------------------------------------------
    async def setup(self) -> None:
        await super().setup()
        await self.interpreters.start(await self.warm_environment())
        self._loops = [
            asyncio.ensure_future(self._follow_events()),
            asyncio.ensure_future(self._wake_loop()),
            asyncio.ensure_future(self._cancel_poll_loop()),
        ]

    async def teardown(self, *exc_info: Any) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        await self.interpreters.close()
        await super().teardown(*exc_info)

    async def sync_with_backend(self) -> None:
        await super().sync_with_backend()
        # The pool's base job template may set variables read at import: warm with them.
        if self.interpreters.env:
            await self.interpreters.retarget(await self.warm_environment())

    async def warm_environment(self) -> dict[str, str]:
        """The environment a flow run of this pool gets, but for its per-run variables:
        this worker's, Prefect's settings as variables, then the base job template's."""
        env = dict(os.environ)
        env.update(get_current_settings().to_environment_variables(exclude_unset=True))
        try:
            pool = self.work_pool
        except RuntimeError:  # not synchronized with the API yet
            return env
        configuration: BaseJobConfiguration = await self.job_configuration.from_template_and_values(
            base_job_template=pool.base_job_template, values={}, client=self.client
        )
        env.update(job_environment(configuration.env))
        return env

    # -- no waiting for a poll -----------------------------------------------------------------
    async def _follow_events(self) -> None:
        await events.follow(
            self.pool_name,
            self._wake.set,
            self.cancel_flow_run,
            self.get_logger(),
        )

    async def _wake_loop(self) -> None:
        """One poll per burst of Scheduled events, as soon as they arrive."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.get_and_submit_flow_runs()
            except Exception:  # the regular poll retries; the wake-up only saves time
                self.get_logger().exception("woken poll failed")

    # -- running ---------------------------------------------------------------------------------
    async def run(
        self,
        flow_run: FlowRun,
        configuration: WarmJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> WarmWorkerResult:
        env = job_environment(configuration.env)
        with working_dir(configuration.working_dir) as cwd:
            process = await self._start(flow_run, configuration, env, cwd)
            self.processes[flow_run.id] = process
            try:
                if task_status is not None:
                    task_status.started(process.pid)
                code = await process.wait()
            finally:
                self.processes.pop(flow_run.id, None)
        return WarmWorkerResult(status_code=code, identifier=str(process.pid))

    async def _start(
        self,
        flow_run: FlowRun,
        configuration: WarmJobConfiguration,
        env: dict[str, str],
        cwd: Path,
    ) -> asyncio.subprocess.Process:
        logger = self.get_flow_run_logger(flow_run)
        if configuration.own_command:
            reason = "its job configuration sets its own command"
        elif not configuration.warm:
            reason = "its job variables ask for a cold start (warm: false)"
        else:
            interpreter, reason = self.interpreters.take(env)
            if interpreter is not None:
                await interpreter.hand(flow_run.id, env, cwd)
                logger.info("Flow run started in warm interpreter pid %s", interpreter.pid)
                return interpreter.process
        logger.info("Flow run starts in a new interpreter: %s", reason)
        command = configuration.command if configuration.own_command else None
        argv = shlex.split(command) if command else [sys.executable, "-m", "prefect.engine"]
        return await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, start_new_session=True)

    # -- cancelling ------------------------------------------------------------------------------
    async def kill_process_group(self, process: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM to the run's process group, SIGKILL to what is left after ``grace``."""
        kill_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
        # Also after the leader has exited: what it started may still be in the group.
        kill_group(process.pid, signal.SIGKILL)
        await process.wait()

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: WarmJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        for process in self.processes.values():
            if str(process.pid) == infrastructure_pid:
                await self.kill_process_group(process, grace_seconds)
                return
        raise InfrastructureNotFound(
            f"no flow run process with pid {infrastructure_pid} runs under this worker"
        )

    async def cancel_flow_run(self, flow_run_id: UUID) -> None:
        """A run of this worker set to Cancelling: marked Cancelled, its process group killed.

        Cancelled first, then SIGKILL, then its steps' sandboxes reaped by the run's label. Not
        SIGTERM: Prefect's engine answers SIGTERM by forcing a Crashed state over the Cancelled
        one, because it tells a cancellation from a crash only through its runner's control
        channel, which has no public API. The steps run in sessions of their own, so the
        group's kill does not reach them: the reap does.
        """
        process = self.processes.get(flow_run_id)
        if process is None:
            return
        try:
            flow_run = await self.client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return
        if flow_run.state is None or not flow_run.state.is_cancelling():
            return
        logger = self.get_flow_run_logger(flow_run)
        await self.client.set_flow_run_state(
            flow_run_id,
            Cancelled(message="Cancelled: the worker killed the flow run's process group."),
            force=True,
        )
        kill_group(process.pid, signal.SIGKILL)
        await process.wait()
        reaped = await reap_steps(flow_run_id)
        logger.info(
            "Cancelled flow run %s: process group %s killed, %d step(s) removed",
            flow_run_id,
            process.pid,
            len(reaped),
        )

    async def _cancel_poll_loop(self) -> None:
        """Cancelling runs in flight the event stream did not report (it was down)."""
        while True:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            if not self.processes:
                continue
            try:
                runs = await self.client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=list(self.processes)),
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.CANCELLING])
                        ),
                    )
                )
                for run in runs:
                    await self.cancel_flow_run(run.id)
            except Exception:  # retried at the next poll
                self.get_logger().exception("looking for cancelled flow runs failed")
