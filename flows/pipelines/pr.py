"""The pull-request pipeline: checks, image build (no push) and dependency scan, concurrently."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from prefect import flow
from prefect.client.schemas.objects import State

from core.identity import identity_of, repository_slug
from flows.config import CHECK_STAGES, ConfigError, GantryConfig, load_config
from flows.deploy.runtime import docker_host, registry_address
from flows.pipelines.observers import pipeline_observers, queue_time_hook
from flows.pipelines.stages import PipelineSummary, StageCall, StageObserver, finish, run_stages
from flows.results import RunContext, StageResult, StageStatus, stage_state
from flows.steps.checkout import CheckoutError, checkout
from flows.steps.checks import run_check
from flows.steps.images import build_images
from flows.steps.scan import scan_dependencies
from flows.steps.source import run_source


def check_stage_calls(
    config: GantryConfig, workspace: Path, no_cache: bool = False
) -> list[tuple[str, StageCall]]:
    """The four check stages as (name, task call) pairs, ready for `run_stages`.

    ``no_cache`` runs every step afresh (and stores the new passing results).
    """
    return [
        (
            stage,
            run_check.with_options(name=stage, task_run_name=stage, refresh_cache=no_cache)(
                stage, config.checks, config.sandbox, workspace, return_state=True
            ),
        )
        for stage in CHECK_STAGES
    ]


def build_stage_call(
    context: RunContext, config: GantryConfig, workspace: Path
) -> tuple[str, StageCall]:
    """Build every [[images]] entry, tagged with the commit SHA (skipped when none are declared)."""
    if not config.images:
        skipped = StageResult(name="build", status=StageStatus.SKIPPED, detail="no [[images]]")
        return ("build", _already(skipped))
    call = build_images.with_options(task_run_name="build")(
        workspace,
        config.images,
        context.sha,
        docker_host(),
        repository_slug(context.repository, context.repository_name),
        registry_address(),
        return_state=True,
    )
    return ("build", call)


async def _already(result: StageResult) -> State[StageResult]:
    """A stage decided without running anything, in the same shape as a task's state."""
    return stage_state(result)


def verification_stage_calls(
    context: RunContext, config: GantryConfig, workspace: Path, no_cache: bool = False
) -> list[tuple[str, StageCall]]:
    """Everything the PR pipeline verifies; the merge pipeline runs the same before it pushes."""
    scan = scan_dependencies.with_options(task_run_name="scan")(
        workspace, config.scan, context.fork, return_state=True
    )
    return [
        *check_stage_calls(config, workspace, no_cache),
        build_stage_call(context, config, workspace),
        ("scan", scan),
    ]


def failed_before_stages(stage: str, message: str) -> StageResult:
    return StageResult(name=stage, status=StageStatus.FAILED, detail=message)


def pr_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    sha = str(params.get("sha", ""))[:7]
    number = params.get("pr_number")
    return f"pr-{number}-{sha}" if number is not None else f"pr-{sha}"


@flow(
    name="pr-pipeline",
    flow_run_name=pr_run_name,
    log_prints=True,
    on_running=[queue_time_hook("pr")],
)
async def pr_pipeline(
    repository: str | None,
    sha: str,
    pr_number: int | None = None,
    head_ref: str | None = None,
    fork: bool = False,
    repository_name: str | None = None,
    no_cache: bool = False,
    received_at: datetime | None = None,
    repository_id: int | None = None,
) -> State[PipelineSummary]:
    """Verify one commit of a pull request; Failed when any stage fails, naming them.

    Webhooks name the base repository by ``repository_name`` and ``repository_id`` only
    (``repository`` None): it is cloned from the worker's Git host (a fork's head comes as
    ``refs/pull/N/head``). An operator's run names a path or URL in ``repository``.
    ``received_at`` is when the webhook arrived; only the queue-time hook reads it.
    """
    del received_at
    started = time.monotonic()
    try:
        source = run_source(repository, identity_of(repository, repository_name, repository_id))
    except (ValueError, CheckoutError) as exc:
        context = RunContext(pipeline="pr", repository=repository or "", sha=sha, fork=fork)
        return await finish(context, [failed_before_stages("checkout", str(exc))], started)
    context = RunContext(
        pipeline="pr",
        repository=source,
        sha=sha,
        repository_name=repository_name,
        pr_number=pr_number,
        ref=head_ref,
        fork=fork,
    )
    async with pipeline_observers(context) as observers:
        return await _verify(context, no_cache, observers.stages)


async def _verify(
    context: RunContext, no_cache: bool, observers: list[StageObserver]
) -> State[PipelineSummary]:
    started = time.monotonic()
    try:
        async with checkout(context.repository, context.sha, name="pr") as workspace:
            try:
                config = load_config(workspace)
            except ConfigError as exc:
                return await finish(context, [failed_before_stages("config", str(exc))], started)
            stages = await run_stages(
                verification_stage_calls(context, config, workspace, no_cache), observers
            )
    except CheckoutError as exc:
        return await finish(context, [failed_before_stages("checkout", str(exc))], started)
    return await finish(context, stages, started)
