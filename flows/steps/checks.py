"""Check steps: lint, static analysis, unit and integration tests, each the repository's argv."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from flows.config import Checks, Sandbox
from flows.logs import step_logger
from flows.results import StageResult, StageStatus, stage_state
from flows.steps.cache import CACHE_EXPIRATION, CHECK_CACHE_POLICY
from flows.steps.sandbox.select import run_step


@task(
    name="check",
    cache_policy=CHECK_CACHE_POLICY,
    cache_expiration=CACHE_EXPIRATION,
    persist_result=True,
)
async def run_check(
    stage: str, checks: Checks, sandbox: Sandbox, workspace: Path
) -> State[StageResult]:
    """Run the ``stage`` command of ``[checks]`` inside the checkout; undeclared is skipped."""
    logger = step_logger(stage)
    step = checks.step(stage)
    if step is None:
        logger.info("%s: not declared in gantry.toml, skipped", stage)
        return stage_state(
            StageResult(name=stage, status=StageStatus.SKIPPED, detail="not declared")
        )
    timeout = checks.timeout_for(stage)
    logger.info("%s: running %s (timeout %.0f s)", stage, step.command, timeout)
    # Repository code: only ever in a sandbox. Its [sandbox] comes from the gantry.toml the
    # pipeline parsed before any step ran: a step can rewrite the checkout's copy.
    result = await run_step(
        step.command,
        workspace,
        timeout,
        logger,
        sandbox=sandbox,
        env={**step.env, "GANTRY_STAGE": stage},
        network=step.network,
        prefix=f"[{stage}] ",
    )
    status = StageStatus.PASSED if result.ok else StageStatus.FAILED
    detail = "" if result.ok else result.describe()
    logger.info("%s: %s in %.1f s %s", stage, status.value, result.seconds, detail)
    return stage_state(
        StageResult(
            name=stage,
            status=status,
            seconds=round(result.seconds, 3),
            exit_code=result.exit_code,
            tail=result.tail,
            detail=detail,
            # A later run that re-uses this result names the run it came from.
            data={"flow_run_id": str(flow_run.get_id() or "")},
        )
    )
