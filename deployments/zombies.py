"""Runs whose process vanished without a final state: marked Crashed by a Prefect automation.

A flow run's process sends ``prefect.flow-run.heartbeat`` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
seconds (``core.settings.prefect_env`` sets 30, Prefect's minimum). A run that is Running (or has
sent a heartbeat) and then sends neither a heartbeat nor a final or paused state within the bound
is a zombie: its process was killed with its worker, evicted with its pod or lost with its
machine, where no worker was left to see the exit code. The automation (Prefect's own "detect
zombie flows" recipe, started by the Running state too, so a run that died before its first
heartbeat is caught as well) moves it to Crashed; deployments/crashes.py then handles it like
any other crash.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

AUTOMATION_NAME = "gantry: crash flow runs that stopped sending heartbeats"
HEARTBEAT = "prefect.flow-run.heartbeat"
# A run that reached one of these states is not a zombie: final states, and the paused ones (a
# release waiting for its approval may have no process at all).
SETTLED = (
    "Completed",
    "Failed",
    "Cancelled",
    "Crashed",
    "TimedOut",
    "Cached",
    "Paused",
    "Suspended",
)


def zombie_automation(bound: timedelta, name: str = AUTOMATION_NAME) -> Automation:
    """Crash each flow run silent for ``bound`` after Running or after its last heartbeat."""
    return Automation(
        name=name,
        description="Marks a flow run Crashed when its process stopped sending heartbeats",
        trigger=EventTrigger(
            after={"prefect.flow-run.Running", HEARTBEAT},
            expect={HEARTBEAT, *(f"prefect.flow-run.{state}" for state in SETTLED)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=bound,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat from its process for {bound.total_seconds():.0f} s",
            )
        ],
    )


async def apply_zombie_automation(bound: timedelta, name: str = AUTOMATION_NAME) -> Automation:
    """Create the automation, or bring the one of that name up to date; it is returned."""
    wanted = zombie_automation(bound, name)
    try:
        current = await Automation.aread(name=name)
    except ValueError:  # Prefect's answer for "no automation of that name"
        return await wanted.acreate()
    wanted.id = current.id
    await wanted.aupdate()
    return wanted
