"""What a run is about and what a stage reports: models shared by steps, summaries and the CLI."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed
from pydantic import BaseModel, Field


class StageStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    # Not declared or not configured: shown as skipped, never counted as a pass.
    SKIPPED = "skipped"
    # A passing result re-used from an earlier run with the same inputs.
    CACHED = "cached"
    CANCELLED = "cancelled"

    @property
    def ok(self) -> bool:
        return self in (StageStatus.PASSED, StageStatus.CACHED, StageStatus.SKIPPED)


class StageResult(BaseModel):
    """The outcome of one stage of a pipeline run."""

    name: str
    status: StageStatus
    seconds: float = 0.0
    exit_code: int | None = None
    # Last lines of output, for the summary; the full output is in the run logs.
    tail: str = ""
    detail: str = ""
    # Stage-specific facts a person or a later step needs (image digests, findings, URLs).
    data: dict[str, Any] = Field(default_factory=dict)
    # For cached results: the flow run that produced the result.
    cached_from: str | None = None

    @property
    def ok(self) -> bool:
        return self.status.ok


def stage_state(result: StageResult) -> State[StageResult]:
    """The Prefect state a stage task ends in, so the UI shows each stage's real outcome.

    A failed stage is a Failed task run (red in the UI, and never cached); a skipped one is
    Completed but named "Skipped", so nobody mistakes it for a pass.
    """
    if result.status == StageStatus.FAILED:
        return Failed(message=f"{result.name}: {result.detail or 'failed'}", data=result)
    if result.status == StageStatus.CANCELLED:
        return Cancelled(message=f"{result.name}: {result.detail or 'cancelled'}", data=result)
    if result.status == StageStatus.SKIPPED:
        return Completed(message=result.detail, data=result, name="Skipped")
    return Completed(data=result)


class RunContext(BaseModel):
    """Who and what a pipeline run is about (all of it data, never code)."""

    pipeline: str
    repository: str
    sha: str
    repository_name: str | None = None
    pr_number: int | None = None
    ref: str | None = None
    fork: bool = False
