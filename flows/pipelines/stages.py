"""What every pipeline does around its stages: run them concurrently, report, summarize, finish."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed
from pydantic import BaseModel, Field

from clients.metrics import load_metrics
from core.identity import repository_slug
from flows.records.summary import publish_summary
from flows.results import RunContext, StageResult, StageStatus

logger = logging.getLogger("gantry.pipeline")


class StageObserver(Protocol):
    """Told when each stage starts and ends: GitHub statuses, metrics."""

    async def stage_started(self, stage: str) -> None: ...

    async def stage_finished(self, stage: str, result: StageResult) -> None: ...


class PipelineSummary(BaseModel):
    context: RunContext
    stages: list[StageResult]
    seconds: float
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.stages if s.status == StageStatus.FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed


async def _notify(observers: Sequence[StageObserver], method: str, *args: Any) -> None:
    for observer in observers:
        try:
            await getattr(observer, method)(*args)
        except Exception:  # an observer never breaks a pipeline
            logger.exception("stage observer %s.%s failed", type(observer).__name__, method)


# A stage task called with ``return_state=True``: a coroutine at run time, though Prefect's
# type hints describe it as the State itself.
StageCall = Awaitable[State[Any]] | State[Any]


async def run_stage(
    name: str, call: StageCall, observers: Sequence[StageObserver] = ()
) -> StageResult:
    """Await one stage task (called with ``return_state=True``) and turn its state into a result."""
    await _notify(observers, "stage_started", name)
    started = time.monotonic()
    try:
        state = await call if inspect.isawaitable(call) else call
        data = await state.aresult(raise_on_failure=False)
    except asyncio.CancelledError:
        result = StageResult(name=name, status=StageStatus.CANCELLED, detail="cancelled")
        await _notify(observers, "stage_finished", name, result)
        raise
    if isinstance(data, StageResult):
        result = data
        if state.name == "Cached" and result.status == StageStatus.PASSED:
            origin = str(result.data.get("flow_run_id") or "") or None
            result = result.model_copy(
                update={"status": StageStatus.CACHED, "cached_from": origin, "seconds": 0.0}
            )
    else:
        # The task itself crashed or timed out before it could describe its outcome.
        status = StageStatus.CANCELLED if state.is_cancelled() else StageStatus.FAILED
        detail = state.message or (repr(data) if data is not None else "no result")
        result = StageResult(
            name=name, status=status, seconds=time.monotonic() - started, detail=detail
        )
    await _notify(observers, "stage_finished", name, result)
    return result


async def run_stages(
    stages: Sequence[tuple[str, StageCall]],
    observers: Sequence[StageObserver] = (),
) -> list[StageResult]:
    """Run independent stages concurrently; every stage reports, whatever the others do."""
    return list(await asyncio.gather(*(run_stage(n, c, observers) for n, c in stages)))


async def _conclude(
    context: RunContext,
    stages: list[StageResult],
    started: float,
    data: dict[str, Any] | None,
    outcome: str | None = None,
) -> PipelineSummary:
    """Publish the run summary and count the run; ``outcome`` defaults to failed/success."""
    summary = PipelineSummary(
        context=context,
        stages=stages,
        seconds=round(time.monotonic() - started, 3),
        data=data or {},
    )
    await publish_summary(
        summary.context.pipeline, summary.stages, summary.seconds, summary.data, summary.context
    )
    metrics = await load_metrics()
    outcome = outcome or ("failed" if summary.failed else "success")
    repository = context.repository_name or repository_slug(context.repository)
    metrics.pipeline_finished(context.pipeline, outcome, summary.seconds, repository)
    return summary


async def finish(
    context: RunContext,
    stages: list[StageResult],
    started: float,
    data: dict[str, Any] | None = None,
) -> State[PipelineSummary]:
    """Publish the run summary and end the flow Failed (naming the stages) or Completed."""
    summary = await _conclude(context, stages, started, data)
    if summary.failed:
        return Failed(message=f"failed stages: {', '.join(summary.failed)}", data=summary)
    return Completed(message="all stages passed", data=summary)


async def finish_cancelled(
    context: RunContext,
    stages: list[StageResult],
    started: float,
    message: str,
    data: dict[str, Any] | None = None,
) -> State[PipelineSummary]:
    """End a run that decided to do nothing (a rejected release): summarized, counted, Cancelled."""
    summary = await _conclude(context, stages, started, data, outcome="cancelled")
    return Cancelled(message=message, data=summary)
