"""Flow runs of the local stack still in flight, cancelled when the stack stops.

Cancelling goes through Prefect's API, as `prefect flow-run cancel` does: the run is set to
Cancelling, and whoever runs it (the flow-run process itself once it started, the worker while
it is pending) kills its process and marks it Cancelled. `gantry down` waits for that, bounded,
before it stops the worker: a run stopped with its worker would stay Running for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from core.settings import StackSettings

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

IN_FLIGHT = ("RUNNING", "PENDING", "CANCELLING")


@dataclass(frozen=True)
class CancelledRun:
    id: str
    name: str
    state: str  # the state it ended in (Cancelled, or what it reached before the deadline)

    def describe(self) -> str:
        return f"{self.name} ({self.id}): {self.state}"


async def cancel_in_flight(settings: StackSettings, timeout: float = 60.0) -> list[CancelledRun]:
    """Cancel every Running or Pending run of the stack's work pool; wait until each ends.

    A run that has not ended by ``timeout`` is set Cancelled by force: its processes die with
    the worker's process group, and its sandboxes are reaped after.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Cancelling

    message = "cancelled: the stack is stopping (gantry down)"
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType(s) for s in IN_FLIGHT])
                )
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[settings.work_pool])),
        )
        for run in runs:
            if run.state is None or not run.state.is_cancelling():
                await client.set_flow_run_state(run.id, Cancelling(message=message))
        pending = {run.id: run for run in runs}
        ended: dict[str, CancelledRun] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            for run_id in list(pending):
                current = await client.read_flow_run(run_id)
                state = current.state
                if state is None or not state.is_final():
                    continue
                if not state.is_cancelled():
                    # Killed for our cancellation, a run may still be recorded Crashed (a worker
                    # that kills before the run hears why): it was cancelled, and a crash would
                    # be retried.
                    note = f"{message} (recorded {state.name} when its process was killed)"
                    await client.set_flow_run_state(run_id, Cancelled(message=note), force=True)
                ended[str(run_id)] = CancelledRun(str(run_id), current.name, "Cancelled")
                del pending[run_id]
        for run_id, run in pending.items():
            # Nobody acted on the cancellation (no worker, a process that hangs): record the
            # end the stack is about to make, rather than a run that looks alive for ever.
            await client.set_flow_run_state(run_id, Cancelled(message=message), force=True)
            ended[str(run_id)] = CancelledRun(str(run_id), run.name, "Cancelled (forced)")
        await _cancel_retries(client, [run.id for run in runs], message)
    return [ended[str(run.id)] for run in runs]


async def _cancel_retries(client: PrefectClient, run_ids: list[UUID], message: str) -> None:
    """A run recorded Crashed before it was set Cancelled may have been retried meanwhile
    (deployments/crashes.py): that retry is part of what was cancelled."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.states import Cancelled

    from deployments.crashes import RETRY_OF

    for run_id in run_ids:
        retries = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"{RETRY_OF}{run_id}"]))
        )
        for retry in retries:
            if retry.state is None or not retry.state.is_final():
                await client.set_flow_run_state(retry.id, Cancelled(message=message), force=True)


def kill_run_processes(run_ids: list[str]) -> list[int]:
    """SIGKILL what still runs for these flow runs (Prefect names the run in each one's
    environment as PREFECT__FLOW_RUN_ID); their sandboxes die with them (--die-with-parent)."""
    needles = [f"PREFECT__FLOW_RUN_ID={run_id}".encode() for run_id in run_ids]
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(needle in environ for needle in needles):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed
