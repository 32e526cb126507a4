"""The deploy stage: one environment, one repository at a time, through the environment's target."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectAlreadyExists

from flows.deploy.runtime import deploy_target
from flows.deploy.targets import DeployError, DeployRequest, DeployTarget
from flows.logs import step_logger
from flows.results import StageResult, StageStatus, stage_state

# A deploy holds the lock for its rollout and the tests that follow it; an hour is the bound.
LOCK_LEASE_SECONDS = 3600.0


def lock_name(repository_slug: str, environment: str) -> str:
    return f"deploy-{environment}-{repository_slug}"


@contextlib.asynccontextmanager
async def deploy_lock(repository_slug: str, environment: str) -> AsyncIterator[None]:
    """Serialize deploys of one repository to one environment: a second run waits its turn."""
    name = lock_name(repository_slug, environment)
    async with get_client() as client:
        # Prefect's `concurrency` does not limit anything when the limit does not exist yet.
        with contextlib.suppress(ObjectAlreadyExists):
            await client.upsert_global_concurrency_limit_by_name(name, limit=1)
    logger = step_logger("deploy")
    waited = time.monotonic()
    async with concurrency(name, occupy=1, strict=True, lease_duration=LOCK_LEASE_SECONDS):
        logger.info("holding %s (waited %.1f s)", name, time.monotonic() - waited)
        yield


@task(name="deploy", cache_policy=NO_CACHE)
async def deploy_images(
    request: DeployRequest, target: DeployTarget | None = None
) -> State[StageResult]:
    """Deploy by digest and wait for health; a failed rollout is rolled back by the target."""
    stage = f"deploy-{request.environment}"
    logger = step_logger(stage)
    target = target or await deploy_target(request.environment)
    started = time.monotonic()
    logger.info("deploying %s to %s", request.images, request.environment)
    try:
        outcome = await target.deploy(request)
    except DeployError as exc:
        logger.error("%s", exc)
        return stage_state(
            StageResult(
                name=stage,
                status=StageStatus.FAILED,
                seconds=round(time.monotonic() - started, 3),
                detail=str(exc),
                data={"rolled_back": exc.rolled_back, "previous_images": exc.previous_images},
            )
        )
    logger.info("%s serves %s at %s", request.environment, request.images, outcome.url)
    return stage_state(
        StageResult(
            name=stage,
            status=StageStatus.PASSED,
            seconds=round(time.monotonic() - started, 3),
            detail=outcome.url or "",
            data={
                "url": outcome.url,
                "images": request.images,
                "previous_images": outcome.previous_images,
            },
        )
    )
