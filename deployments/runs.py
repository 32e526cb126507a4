"""Trigger a pipeline through its deployment, follow it, and read back what it reported."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    LogFilterTimestamp,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from pydantic import BaseModel, Field, ValidationError

from core.approvals import (
    ApprovalError,
    ApprovalStatement,
    Decision,
    sign_statement,
    utc_timestamp,
)
from core.links import flow_run_url
from flows.records.summary import summary_key
from flows.steps.checkout import SHA_RE

Progress = Callable[[str], None]
POLL_SECONDS = 0.5
REFUSAL_LOG_WAIT = 10.0


class RunError(RuntimeError):
    """The run could not be started or followed (bad target, stack not reachable)."""


class StageLine(BaseModel):
    name: str
    status: str
    seconds: float
    detail: str = ""


class RunOutcome(BaseModel):
    """What `gantry run ... --json` prints: one object a script can trust."""

    pipeline: str
    flow_run_id: str
    flow_run_name: str
    url: str
    state: str
    passed: bool
    paused: bool = False
    seconds: float
    message: str = ""
    stages: list[StageLine] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)


def resolve_target(repo: str, sha: str) -> tuple[str, str]:
    """A local path becomes absolute and a ref or short SHA is resolved; URLs need a full SHA."""
    path = Path(repo)
    if path.is_dir():
        found = subprocess.run(
            [
                "git",
                "-C",
                str(path),
                "rev-parse",
                "--verify",
                "--end-of-options",
                f"{sha}^{{commit}}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if found.returncode != 0:
            raise RunError(f"{sha!r} is not a commit of {repo}: {found.stderr.strip()}")
        return str(path.resolve()), found.stdout.strip()
    if not SHA_RE.match(sha):
        raise RunError(f"for a remote repository, --sha must be a full commit SHA, not {sha!r}")
    return repo, sha


async def _stage_progress(flow_run_id: uuid.UUID) -> str:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    parts = []
    for run in sorted(runs, key=lambda r: r.name):
        state = (run.state.name if run.state else None) or "?"
        parts.append(f"{run.name}: {state.lower()}")
    return ", ".join(parts)


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


async def run_pipeline(
    pipeline: str,
    deployment: str,
    parameters: dict[str, Any],
    ui_url: str,
    progress: Progress,
    timeout: float = 3600.0,
    on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
) -> RunOutcome:
    """Create a flow run of ``deployment`` and follow it to its final state.

    ``on_paused`` is called each time the run pauses (an approval gate); returning False
    stops following, and the outcome then reports the paused state.
    """
    started = time.monotonic()
    try:
        created = run_deployment(deployment, parameters=parameters, timeout=0)
        flow_run: FlowRun = await created if inspect.isawaitable(created) else created
    except Exception as exc:
        raise RunError(f"cannot start {deployment}: {exc}") from exc
    url = flow_run_url(flow_run.id, ui_url) or ui_url
    progress(f"{pipeline} run {flow_run.name} created: {url}")
    last = ""
    paused_key: object = None
    async with get_client() as client:
        while True:
            flow_run = await client.read_flow_run(flow_run.id)
            state = flow_run.state
            if state is not None and state.is_final():
                break
            if state is not None and state.is_paused() and on_paused is not None:
                key = state.state_details.pause_key
                if key != paused_key:
                    paused_key = key
                    if not await on_paused(flow_run):
                        break
            if time.monotonic() - started > timeout:
                raise RunError(f"{flow_run.name} did not finish within {timeout:.0f} s: {url}")
            stage_states = await _stage_progress(flow_run.id)
            line = f"{state.name if state else 'Pending'}"
            line += f" | {stage_states}" if stage_states else ""
            if line != last:
                progress(line)
                last = line
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


PIPELINE_FLOWS = {"pr": "pr-pipeline", "merge": "merge-pipeline", "release": "release-pipeline"}


async def last_runs(ui_url: str) -> dict[str, dict[str, str]]:
    """The newest run of each pipeline: its name, state and page in the UI."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    found: dict[str, dict[str, str]] = {}
    async with get_client() as client:
        for pipeline, flow_name in PIPELINE_FLOWS.items():
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=1,
            )
            if runs:
                run = runs[0]
                found[pipeline] = {
                    "name": run.name,
                    "state": (run.state.name if run.state else None) or "unknown",
                    "url": flow_run_url(run.id, ui_url) or ui_url,
                }
    return found
