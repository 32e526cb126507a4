"""The pull-request pipeline: checks, image build (no push) and dependency scan, concurrently."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

from prefect import flow
from prefect.client.schemas.objects import State

from flows.checkout import CheckoutError, checkout
from flows.checks import run_check
from flows.config import CHECK_STAGES, ConfigError, GantryConfig, load_config
from flows.pipeline import PipelineSummary, RunContext, StageObserver, finish, run_stages
from flows.results import StageResult, StageStatus


def check_stage_calls(
    config: GantryConfig, workspace: Path, no_cache: bool = False
) -> list[tuple[str, Awaitable[State[Any]]]]:
    """The four check stages as (name, task call) pairs, ready for `run_stages`.

    ``no_cache`` runs every step afresh (and stores the new passing results).
    """
    return [
        (
            stage,
            cast(
                Awaitable[State[Any]],
                run_check.with_options(name=stage, task_run_name=stage, refresh_cache=no_cache)(
                    stage, config.checks, workspace, return_state=True
                ),
            ),
        )
        for stage in CHECK_STAGES
    ]


def verification_stage_calls(
    context: RunContext, config: GantryConfig, workspace: Path, no_cache: bool = False
) -> list[tuple[str, Awaitable[State[Any]]]]:
    """Everything the PR pipeline verifies; the merge pipeline runs the same before it pushes."""
    return check_stage_calls(config, workspace, no_cache)


def failed_before_stages(stage: str, message: str) -> StageResult:
    return StageResult(name=stage, status=StageStatus.FAILED, detail=message)


def pr_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    sha = str(params.get("sha", ""))[:7]
    number = params.get("pr_number")
    return f"pr-{number}-{sha}" if number is not None else f"pr-{sha}"


@flow(name="pr-pipeline", flow_run_name=pr_run_name, log_prints=True)
async def pr_pipeline(
    repository: str,
    sha: str,
    pr_number: int | None = None,
    head_ref: str | None = None,
    fork: bool = False,
    repository_name: str | None = None,
    no_cache: bool = False,
) -> State[PipelineSummary]:
    """Verify one commit of a pull request; Failed when any stage fails, naming them."""
    started = time.monotonic()
    context = RunContext(
        pipeline="pr",
        repository=repository,
        sha=sha,
        repository_name=repository_name,
        pr_number=pr_number,
        ref=head_ref,
        fork=fork,
    )
    observers: list[StageObserver] = []
    try:
        async with checkout(repository, sha, name=f"pr-{pr_number or 'x'}") as workspace:
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
