"""Trigger a pipeline through its deployment, follow it, and read back what it reported."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTimestamp,
)
from prefect.client.schemas.objects import FlowRun, Log, TaskRun
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.deployments import arun_deployment
from prefect.states import Cancelling
from pydantic import BaseModel, ValidationError

from core.approvals import (
    ApprovalError,
    ApprovalStatement,
    Decision,
    sign_statement,
    utc_timestamp,
)
from core.links import flow_run_url

# What a followed run reports, defined without Prefect for `gantry run` (re-exported here).
from deployments.cli.api import Progress as Progress
from deployments.cli.api import RunError as RunError
from deployments.cli.api import RunOutcome as RunOutcome
from deployments.cli.api import StageLine as StageLine
from deployments.cli.api import Watch as Watch
from deployments.cli.api import progress_lines as progress_lines
from flows.records.summary import summary_key

# The tag a retry carries, naming the run it repeats.
RETRY_TAG = "gantry:retry-of:"
POLL_SECONDS = 0.5
REFUSAL_LOG_WAIT = 10.0


async def _task_runs(client: PrefectClient, flow_run_id: uuid.UUID) -> list[TaskRun]:
    return await client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )


async def _stage_states(client: PrefectClient, flow_run_id: uuid.UUID) -> list[tuple[str, str]]:
    runs = await _task_runs(client, flow_run_id)
    return sorted(
        (run.name, ((run.state.name if run.state else None) or "?").lower()) for run in runs
    )


async def _read_summary(flow_run: FlowRun, pipeline: str) -> tuple[list[StageLine], dict[str, Any]]:
    state = flow_run.state
    if state is not None and state.is_final():
        try:
            result = await state.aresult(raise_on_failure=False)
        except Exception:  # result storage unreachable from here: fall back to the artifact
            result = None
        stages = getattr(result, "stages", None)
        if stages is not None:
            lines = [
                StageLine(name=s.name, status=s.status.value, seconds=s.seconds, detail=s.detail)
                for s in stages
            ]
            return lines, dict(getattr(result, "data", {}) or {})
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                key=ArtifactFilterKey(any_=[summary_key(pipeline)]),
            ),
            limit=1,
        )
    if not artifacts:
        return [], {}
    raw = artifacts[0].data
    rows: list[dict[str, Any]] = json.loads(raw) if isinstance(raw, str) else []
    return [
        StageLine(
            name=r["stage"], status=r["status"], seconds=r["seconds"], detail=r.get("detail", "")
        )
        for r in rows
    ], {}


async def run_summary(flow_run_id: str, pipeline: str) -> tuple[list[StageLine], dict[str, Any]]:
    """A finished run's stages and what it returned besides them (images, URLs), from its result."""
    async with get_client() as client:
        flow_run = await client.read_flow_run(uuid.UUID(flow_run_id))
    return await _read_summary(flow_run, pipeline)


async def start_run(
    deployment: str, parameters: dict[str, Any], tags: list[str] | None = None
) -> FlowRun:
    """Create a flow run of ``deployment`` (its worker picks it up) without waiting for it."""
    try:
        return await arun_deployment(deployment, parameters=parameters, timeout=0, tags=tags)
    except Exception as exc:
        raise RunError(f"cannot start {deployment}: {exc}") from exc


async def run_pipeline(
    pipeline: str,
    deployment: str,
    parameters: dict[str, Any],
    ui_url: str,
    progress: Progress,
    timeout: float = 3600.0,
    on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
    watch: Watch | None = None,
) -> RunOutcome:
    """Create a flow run of ``deployment`` and follow it to its final state (see follow_run)."""
    started = time.monotonic()
    flow_run = await start_run(deployment, parameters)
    return await follow_run(
        flow_run, pipeline, ui_url, progress, timeout, on_paused, watch, started=started
    )


async def follow_run(
    flow_run: FlowRun,
    pipeline: str,
    ui_url: str,
    progress: Progress,
    timeout: float = 3600.0,
    on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
    watch: Watch | None = None,
    started: float | None = None,
) -> RunOutcome:
    """Follow a flow run to its final state, showing each change of it and of its stages.

    ``watch`` sees every poll (a live table); without it, changes are ``progress`` lines.
    ``on_paused`` is called each time the run pauses (an approval gate); returning False
    stops following, and the outcome then reports the paused state.
    """
    started = time.monotonic() if started is None else started
    watch = watch or progress_lines(progress)
    url = flow_run_url(flow_run.id, ui_url) or ui_url
    progress(f"{pipeline} run {flow_run.name} created: {url}")
    paused_key: object = None
    async with get_client() as client:
        while True:
            flow_run = await client.read_flow_run(flow_run.id)
            state = flow_run.state
            if state is not None and state.is_final():
                watch(state.name or state.type.value, await _stage_states(client, flow_run.id))
                break
            if state is not None and state.is_paused() and on_paused is not None:
                key = state.state_details.pause_key
                if key != paused_key:
                    paused_key = key
                    if not await on_paused(flow_run):
                        break
            if time.monotonic() - started > timeout:
                raise RunError(f"{flow_run.name} did not finish within {timeout:.0f} s: {url}")
            shown = (state.name if state else None) or "Pending"
            watch(shown, await _stage_states(client, flow_run.id))
            await asyncio.sleep(POLL_SECONDS)
    stages, data = await _read_summary(flow_run, pipeline)
    assert state is not None
    return RunOutcome(
        pipeline=pipeline,
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        url=url,
        state=state.name or state.type.value,
        passed=state.is_completed(),
        paused=state.is_paused(),
        seconds=round(time.monotonic() - started, 3),
        message=state.message or "",
        stages=stages,
        data=data,
    )


class ApprovalOutcome(BaseModel):
    flow_run_id: str
    accepted: bool
    state: str
    message: str
    candidate: str = ""
    decision: str = ""


async def pending_statement(flow_run_id: str, decision: Decision, reason: str) -> ApprovalStatement:
    """The statement to sign for the release ``flow_run_id`` waits on, read from its pause form.

    The form is what the flow itself filled in (candidate, digests); the flow checks them again
    against its candidate, so a wrong form can only make the answer be refused.
    """
    from prefect.input import aread_flow_run_input, keyset_from_paused_state

    try:
        run_id = uuid.UUID(flow_run_id)
    except ValueError:
        raise RunError(f"{flow_run_id!r} is not a flow run id") from None
    async with get_client() as client:
        try:
            flow_run = await client.read_flow_run(run_id)
        except Exception as exc:
            raise RunError(f"no flow run {flow_run_id}: {exc}") from exc
        state = flow_run.state
        if state is None or not state.is_paused():
            name = state.name if state else "unknown"
            raise RunError(f"flow run {flow_run.name} is not waiting for an approval ({name})")
        schema: Any = await aread_flow_run_input(
            key=keyset_from_paused_state(state)["schema"], flow_run_id=run_id
        )
    fields: dict[str, Any] = schema.get("properties", {}) if isinstance(schema, dict) else {}
    form = {name: spec.get("default") for name, spec in fields.items()}
    if not form.get("candidate") or "signature" not in form:
        raise RunError(f"flow run {flow_run.name} does not wait for a signed approval")
    try:
        return ApprovalStatement(
            run=str(run_id),
            candidate=str(form["candidate"]),
            digests=list(form.get("digests") or []),
            decision=decision,
            reason=reason,
            time=utc_timestamp(),
        )
    except ValidationError as exc:
        raise RunError(f"flow run {flow_run.name}'s approval form is not usable: {exc}") from None


async def answer_approval(
    flow_run_id: str, decision: Decision, reason: str, key: Path, wait: float = 15.0
) -> ApprovalOutcome:
    """Sign the statement for a waiting release with ``key`` and resume the run with it.

    ``accepted`` is False when the flow refused the answer (the message says why).
    """
    statement = await pending_statement(flow_run_id, decision, reason)
    try:
        signature = await asyncio.to_thread(sign_statement, statement, key)
    except ApprovalError as exc:
        raise RunError(str(exc)) from None
    answer = {**statement.model_dump(mode="json"), "signature": signature}
    outcome = await submit_answer(flow_run_id, answer, wait)
    return outcome.model_copy(update={"candidate": statement.candidate, "decision": decision})


async def _refusal(client: PrefectClient, run_id: uuid.UUID, since: datetime) -> str:
    """Why the flow refused the answer sent at ``since``, as its approval gate logged it.

    Flow logs reach the API in batches, a second or two late: wait a little for the line.
    """
    deadline = time.monotonic() + REFUSAL_LOG_WAIT
    while True:
        logs = await client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[run_id]),
                level=LogFilterLevel(ge_=30),
                timestamp=LogFilterTimestamp(after_=since),
            ),
            sort=LogSort.TIMESTAMP_DESC,
            limit=20,
        )
        for log in logs:
            if log.message.startswith("answer refused"):
                return log.message
        if time.monotonic() > deadline:
            return "answer refused (the run's log says why)"
        await asyncio.sleep(POLL_SECONDS)


async def submit_answer(
    flow_run_id: str, answer: dict[str, Any], wait: float = 15.0
) -> ApprovalOutcome:
    """Resume a paused release with ``answer`` (the approval form's fields) and see what it did."""
    from prefect.flow_runs import aresume_flow_run

    run_id = uuid.UUID(flow_run_id)
    async with get_client() as client:
        flow_run = await client.read_flow_run(run_id)
        state = flow_run.state
        if state is None or not state.is_paused():
            name = state.name if state else "unknown"
            raise RunError(f"flow run {flow_run.name} is not waiting for an approval ({name})")
        key = state.state_details.pause_key
        runs_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        tasks_before = len(await client.read_task_runs(flow_run_filter=runs_filter))
        sent_at = datetime.now(UTC)
        try:
            await aresume_flow_run(run_id, run_input=answer)
        except Exception as exc:
            raise RunError(f"the answer was not accepted by the Prefect API: {exc}") from exc
        # The flow checks the signature: a refused answer pauses it again under a new key.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            flow_run = await client.read_flow_run(run_id)
            state = flow_run.state
            assert state is not None
            if state.is_paused() and state.state_details.pause_key != key:
                why = await _refusal(client, run_id, sent_at)
                return ApprovalOutcome(
                    flow_run_id=flow_run_id,
                    accepted=False,
                    state=state.name or "Paused",
                    message=f"{why}; the release is still waiting",
                )
            # Accepted: the flow went on to its next step (or ended, for a rejection).
            moved_on = state.is_final() or (
                state.is_running()
                and len(await client.read_task_runs(flow_run_filter=runs_filter)) > tasks_before
            )
            if moved_on:
                return ApprovalOutcome(
                    flow_run_id=flow_run_id,
                    accepted=True,
                    state=state.name or state.type.value,
                    message="answer accepted",
                )
            await asyncio.sleep(POLL_SECONDS)
    raise RunError(f"flow run {flow_run_id} did not pick up the answer within {wait:.0f} s")


async def find_run(client: PrefectClient, run: str) -> FlowRun:
    """The flow run ``run`` names: its id, else its name (the newest run of that name)."""
    try:
        run_id = uuid.UUID(run)
    except ValueError:
        found = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
        if not found:
            raise RunError(f"no flow run named {run!r}") from None
        return found[0]
    try:
        return await client.read_flow_run(run_id)
    except Exception as exc:  # ObjectNotFound, or the API's own error
        raise RunError(f"no flow run {run}: {exc}") from None


class LogLine(BaseModel):
    """One line of a run's log: `gantry logs --json` prints a list of them."""

    id: str
    timestamp: datetime
    level: int
    stage: str | None
    message: str


async def _read_logs(
    client: PrefectClient, log_filter: LogFilter, stages: dict[uuid.UUID, str]
) -> list[LogLine]:
    lines: list[LogLine] = []
    page = 200  # the API's default cap on one page
    while True:
        logs: list[Log] = await client.read_logs(
            log_filter=log_filter, sort=LogSort.TIMESTAMP_ASC, limit=page, offset=len(lines)
        )
        lines += [
            LogLine(
                id=str(log.id),
                timestamp=log.timestamp,
                level=log.level,
                stage=stages.get(log.task_run_id) if log.task_run_id else None,
                message=log.message,
            )
            for log in logs
        ]
        if len(logs) < page:
            return lines


# Logs reach the API in batches, a few seconds after they were written: a followed run's
# log is read again from this far behind its newest line, and lines already shown skipped.
LOG_LATENESS = timedelta(seconds=30)


async def run_logs(
    run: str,
    emit: Callable[[LogLine], None],
    stage: str | None = None,
    follow: bool = False,
    settle: float = 3.0,
) -> FlowRun:
    """Emit the log lines of ``run`` (a flow run's id or name), oldest first.

    The steps' output is in them, line by line. With ``stage``, only that stage's task run's
    lines. With ``follow``, keep emitting new lines until the run ends; its last lines reach
    the API a batch interval late, so following stops after ``settle`` s with nothing new.
    """
    async with get_client() as client:
        flow_run = await find_run(client, run)
        shown: set[str] = set()
        newest: datetime | None = None
        quiet_since: float | None = None
        while True:
            stages = {t.id: t.name for t in await _task_runs(client, flow_run.id)}
            log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
            if newest is not None:
                log_filter.timestamp = LogFilterTimestamp(after_=newest - LOG_LATENESS)
            lines = await _read_logs(client, log_filter, stages)
            if stage is not None:
                if not follow and stage not in stages.values():
                    known = ", ".join(sorted(set(stages.values()))) or "none"
                    raise RunError(f"{flow_run.name} has no stage {stage!r} (stages: {known})")
                lines = [line for line in lines if line.stage == stage]
            new = [line for line in lines if line.id not in shown]
            for line in new:
                emit(line)
                shown.add(line.id)
                newest = line.timestamp if newest is None else max(newest, line.timestamp)
            if not follow:
                return flow_run
            flow_run = await client.read_flow_run(flow_run.id)
            if flow_run.state is not None and flow_run.state.is_final():
                now = time.monotonic()
                quiet_since = now if new or quiet_since is None else quiet_since
                if now - quiet_since >= settle:
                    return flow_run
            await asyncio.sleep(POLL_SECONDS)


class CancelOutcome(BaseModel):
    flow_run_id: str
    flow_run_name: str
    state: str
    cancelled: bool
    message: str


async def cancel_run(run: str, wait: float = 30.0) -> CancelOutcome:
    """Cancel ``run`` as Prefect does: set it Cancelling; its worker then stops its process.

    Waits up to ``wait`` s for the final Cancelled state (0: return once it is Cancelling).
    """
    async with get_client() as client:
        flow_run = await find_run(client, run)
        state = flow_run.state
        if state is not None and state.is_final():
            raise RunError(f"{flow_run.name} has already ended: {state.name}")
        result: OrchestrationResult[Any] = await client.set_flow_run_state(
            flow_run.id, Cancelling(message="cancelled with gantry cancel")
        )
        if result.status != SetStateStatus.ACCEPT:
            why = getattr(result.details, "reason", None) or result.status.value
            raise RunError(f"the Prefect API refused to cancel {flow_run.name}: {why}")
        deadline = time.monotonic() + wait
        while True:
            flow_run = await client.read_flow_run(flow_run.id)
            state = flow_run.state
            assert state is not None
            if state.is_final() or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_SECONDS)
    return CancelOutcome(
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        state=state.name or state.type.value,
        cancelled=state.is_cancelled(),
        message=state.message or "",
    )


async def start_retry(run: str) -> tuple[FlowRun, str]:
    """A new run of ``run``'s deployment with its parameters, tagged as a retry of it.

    ``no_cache`` is turned off: the stages that passed are taken from the cache, only the
    others run again. Returns the new run and the pipeline (its deployment's name).
    """
    async with get_client() as client:
        original = await find_run(client, run)
        if original.deployment_id is None:
            raise RunError(f"{original.name} was not started from a deployment: nothing to re-run")
        deployment = await client.read_deployment(original.deployment_id)
    parameters = dict(original.parameters)
    if "no_cache" in parameters:
        parameters["no_cache"] = False
    # A retry of a retry names the run it repeats, not the whole chain.
    tags = [t for t in original.tags if not t.startswith(RETRY_TAG)]
    tags.append(f"{RETRY_TAG}{original.id}")
    flow_run = await start_run(str(deployment.id), parameters, tags)
    return flow_run, deployment.name
