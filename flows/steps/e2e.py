"""End-to-end and smoke steps: the repository's own command against a deployed environment."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from flows.config import E2E, Sandbox, Smoke
from flows.logs import step_logger
from flows.results import StageResult, StageStatus, stage_state
from flows.steps.sandbox.select import run_step


@task(name="e2e", cache_policy=NO_CACHE)
async def run_against(
    stage: str,
    command: E2E | Smoke | None,
    sandbox: Sandbox,
    workspace: Path,
    target_url: str,
    environment: str,
) -> State[StageResult]:
    """Run ``command`` with GANTRY_TARGET_URL set; never cached: the environment is live state."""
    logger = step_logger(stage)
    if command is None:
        detail = f"no [{stage}] command in gantry.toml"
        logger.info("%s: %s, skipped", stage, detail)
        return stage_state(StageResult(name=stage, status=StageStatus.SKIPPED, detail=detail))
    env = {**command.env, "GANTRY_TARGET_URL": target_url, "GANTRY_ENVIRONMENT": environment}
    logger.info("%s: %s against %s", stage, command.command, target_url)
    # Repository code against a live environment: in a sandbox that reaches the target only
    # (network "target"), or the target and the internet when it declares "outside".
    result = await run_step(
        command.command,
        workspace,
        command.timeout,
        logger,
        sandbox=sandbox,
        env=env,
        network="outside" if command.network == "outside" else "target",
        target_url=target_url,
        prefix=f"[{stage}] ",
    )
    status = StageStatus.PASSED if result.ok else StageStatus.FAILED
    return stage_state(
        StageResult(
            name=stage,
            status=status,
            seconds=round(result.seconds, 3),
            exit_code=result.exit_code,
            tail=result.tail,
            detail="" if result.ok else result.describe(),
            data={"target_url": target_url},
        )
    )
