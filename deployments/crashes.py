"""Crashed runs: their steps killed, GitHub told it was the infrastructure, one automatic retry.

A flow run is Crashed when its infrastructure failed, not its code: the worker saw its process
killed (SIGKILL, out of memory, an evicted pod), or the zombie automation (deployments/zombies.py)
found it silent. For each ``prefect.flow-run.Crashed`` event, ``watch_crashes`` (started beside
the worker, deployments/worker.py, so it runs wherever workers run):

1. kills the run's steps: every sandbox labelled with its flow run id (local bubblewrap sandboxes
   on this machine, step pods in the cluster), which its dead process can no longer end;
2. creates one retry of a Gantry pipeline run: same deployment, parameters and job variables,
   tagged ``gantry:retry-of:<crashed id>`` (the crashed run gets ``gantry:retried-as:<retry id>``:
   the UI links both ways), unless the run was itself a retry (once only) or a newer run of the
   same repository and branch or pull request was asked for since (a retry never replaces newer
   work; a merge retry still meets the merge's own stale-head check before deploying);
3. reports ``error`` (infrastructure, not ``failure``) on the commit's stages the run left
   pending, linking the retry and naming the crashed run.

Every worker replica runs the service: the retry's idempotency key (the crashed run's id) makes
Prefect create it once however many replicas, or redelivered events, ask.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import MERGE_DEPLOYMENT, PR_DEPLOYMENT, RELEASE_DEPLOYMENT
from deployments.zombies import apply_zombie_automation
from flows.pipelines.observers import github_repository
from flows.records.github_report import StatusReporter
from flows.results import RunContext
from flows.steps.sandbox.base import SandboxError
from flows.steps.sandbox.select import FLOW_RUN_LABEL, get_runner

logger = logging.getLogger("gantry.crashes")

CRASHED = "prefect.flow-run.Crashed"
RETRY_OF = "gantry:retry-of:"
RETRIED_AS = "gantry:retried-as:"
PIPELINES = {PR_DEPLOYMENT: "pr", MERGE_DEPLOYMENT: "merge", RELEASE_DEPLOYMENT: "release"}
# What makes two runs the same work: a newer run with these parameters equal supersedes a crash.
SAME_WORK = ("repository", "repository_name", "repository_id", "ref", "pr_number")
# A subscription that failed (Prefect restarting) is tried again after this pause.
RESUBSCRIBE_SECONDS = 5.0


class CrashSettings(BaseSettings):
    """How crashes are handled; set by whoever runs the worker (``GANTRY_CRASH_*``)."""

    model_config = SettingsConfigDict(env_prefix="GANTRY_CRASH_", extra="ignore")

    # Silence after which a Running run counts as crashed. Above the heartbeat period (30 s)
    # with room for two lost heartbeats; tests shorten it (Prefect allows 10 s at least).
    zombie_seconds: float = Field(default=90.0, ge=10)
    # Crashes this recent are handled when the service starts (it was down, or restarting).
    lookback_seconds: float = Field(default=900.0, ge=0)
    retry: bool = True


@dataclass(frozen=True)
class Outcome:
    """What was done about one crashed run."""

    run_id: UUID
    reaped: list[str]
    retry_id: UUID | None = None
    not_retried: str | None = None


def run_id_of(resource_id: str) -> UUID | None:
    try:
        return UUID(resource_id.removeprefix("prefect.flow-run."))
    except ValueError:
        return None


async def reap_steps(run_id: UUID) -> list[str]:
    """Kill every sandbox of the run (its labels carry the flow run id); their names."""
    try:
        return await get_runner().reap({FLOW_RUN_LABEL: str(run_id)})
    except SandboxError as exc:
        logger.warning("could not kill the steps of crashed run %s: %s", run_id, exc)
        return []


CANCEL_STATES = frozenset({StateType.CANCELLING, StateType.CANCELLED})


def _same_work(parameters: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(parameters.get(key) for key in SAME_WORK)


async def newer_run(client: PrefectClient, crashed: FlowRun) -> FlowRun | None:
    """A run of the same deployment and work asked for after the crashed one, if any."""
    assert crashed.deployment_id is not None
    runs = await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[crashed.deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=50,
    )
    ours = f"{RETRY_OF}{crashed.id}"
    for run in runs:
        if run.id == crashed.id or ours in run.tags:
            continue
        later = run.created and crashed.created and run.created > crashed.created
        if later and _same_work(run.parameters) == _same_work(crashed.parameters):
            return run
    return None


async def why_not_retried(client: PrefectClient, crashed: FlowRun) -> str | None:
    if any(tag.startswith(RETRY_OF) for tag in crashed.tags):
        return "it was already a retry of a crashed run"
    # Someone cancelled it: the engine reports the kill that ends a cancel as a crash.
    history = await client.read_flow_run_states(crashed.id)
    if any(state.type in CANCEL_STATES for state in history):
        return "it was cancelled"
    newer = await newer_run(client, crashed)
    if newer is not None:
        return f"a newer run ({newer.name}) replaced it"
    return None


async def create_retry(client: PrefectClient, crashed: FlowRun) -> FlowRun:
    """The crashed run again: same deployment, parameters and job variables, tagged as a retry."""
    assert crashed.deployment_id is not None
    tags = [t for t in crashed.tags if not t.startswith((RETRY_OF, RETRIED_AS))]
    retry = await client.create_flow_run_from_deployment(
        crashed.deployment_id,
        parameters=dict(crashed.parameters),
        job_variables=dict(crashed.job_variables or {}),
        tags=[*tags, f"{RETRY_OF}{crashed.id}"],
        # One retry per crashed run, whichever replica or redelivered event asks.
        idempotency_key=f"gantry-retry-of-{crashed.id}",
    )
    # A replica that hears the event late finds the tag there already: it is not added twice.
    tagged = dict.fromkeys([*crashed.tags, f"{RETRIED_AS}{retry.id}"])
    await client.update_flow_run(crashed.id, tags=list(tagged))
    return retry


async def pending_stages(client: PrefectClient, run_id: UUID) -> list[str]:
    """The stages (task runs) the crashed run had started and never finished."""
    task_runs = await client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    )
    names = (t.name for t in task_runs if t.state is None or not t.state.is_final())
    return sorted(dict.fromkeys(names))


async def report(crashed: FlowRun, pipeline: str, stages: list[str], outcome: Outcome) -> None:
    params = crashed.parameters
    sha = str(params.get("sha") or "")
    context = RunContext(
        pipeline=pipeline,
        repository=str(params.get("repository") or ""),
        sha=sha,
        repository_name=params.get("repository_name"),
    )
    name = github_repository(context)
    if name is None or not sha:
        return
    # The status links where the commit goes on: the retry when there is one.
    shown = outcome.retry_id or crashed.id
    reporter = await StatusReporter.load(
        name, sha, flow_run_id=str(shown), pipeline=pipeline, pr_number=params.get("pr_number")
    )
    async with reporter:
        crashed_url = reporter.run_url(str(crashed.id)) or str(crashed.id)
        if outcome.retry_id is not None:
            what = f"infrastructure crash, not the code; retried. Crashed run: {crashed_url}"
        else:
            what = f"infrastructure crash, not retried ({outcome.not_retried}): {crashed_url}"
        await reporter.infrastructure_error(stages, what, crashed_run_id=str(crashed.id))


async def handle_crash(run_id: UUID, settings: CrashSettings | None = None) -> Outcome:
    """Kill the crashed run's steps, retry it once if it may be, tell GitHub."""
    settings = settings or CrashSettings()
    # First: a step left running holds a core (or a port) until it is killed.
    reaped = await reap_steps(run_id)
    async with get_client() as client:
        crashed = await client.read_flow_run(run_id)
        if crashed.state_type != StateType.CRASHED or crashed.deployment_id is None:
            return Outcome(run_id, reaped, not_retried="not a crashed deployment run")
        deployment = await client.read_deployment(crashed.deployment_id)
        flow = await client.read_flow(deployment.flow_id)
        pipeline = PIPELINES.get(f"{flow.name}/{deployment.name}")
        if pipeline is None:
            return Outcome(run_id, reaped, not_retried="not a Gantry pipeline")
        why = await why_not_retried(client, crashed) if settings.retry else "retries are off"
        outcome = Outcome(run_id, reaped, not_retried=why)
        if why is None:
            retry = await create_retry(client, crashed)
            outcome = Outcome(run_id, reaped, retry_id=retry.id)
        stages = await pending_stages(client, run_id)
    if outcome.retry_id is not None:
        logger.warning("run %s crashed; retried as run %s", run_id, outcome.retry_id)
    else:
        logger.warning("run %s crashed; not retried: %s", run_id, outcome.not_retried)
    await report(crashed, pipeline, stages, outcome)
    return outcome


async def _handle_quietly(run_id: UUID, settings: CrashSettings) -> None:
    try:
        await handle_crash(run_id, settings)
    except Exception:  # one run's trouble must not stop the service for the others
        logger.exception("could not handle crashed run %s", run_id)


async def watch_crashes(settings: CrashSettings | None = None) -> None:
    """Forever: keep the zombie automation applied, and handle each crashed run once."""
    settings = settings or CrashSettings()
    applied = False
    handled: set[UUID] = set()
    while True:
        try:
            if not applied:
                await apply_zombie_automation(timedelta(seconds=settings.zombie_seconds))
                applied = True
            since = datetime.now(UTC) - timedelta(seconds=settings.lookback_seconds)
            # `until` far ahead: the live stream must not stop at the moment of subscribing.
            until = datetime.now(UTC) + timedelta(days=36500)
            events = EventFilter(
                event=EventNameFilter(name=[CRASHED]),
                occurred=EventOccurredFilter(since=since, until=until),
            )
            async with get_events_subscriber(filter=events) as subscriber:
                async for event in subscriber:
                    run_id = run_id_of(event.resource.id)
                    if run_id is None or run_id in handled:
                        continue
                    handled.add(run_id)
                    await _handle_quietly(run_id, settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Prefect unreachable or restarting: subscribe again
            logger.warning("crash watch interrupted (%s); resubscribing", exc)
        await asyncio.sleep(RESUBSCRIBE_SECONDS)
