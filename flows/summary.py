"""The run summary a person looks at instead of the logs: one table artifact per run."""

from __future__ import annotations

import logging
from typing import Any

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.context import FlowRunContext

from flows.results import StageResult

logger = logging.getLogger("gantry.summary")
STATUS_ICONS = {"passed": "✅", "cached": "♻️", "failed": "❌", "skipped": "⏭️", "cancelled": "🚫"}


def summary_key(pipeline: str) -> str:
    """Artifact key of a pipeline's summary table (the CLI reads it back by this key)."""
    return f"{pipeline}-summary"


def stage_rows(stages: list[StageResult]) -> list[dict[str, Any]]:
    return [
        {
            "stage": s.name,
            "status": s.status.value,
            "seconds": round(s.seconds, 2),
            "detail": (s.detail or "")[:300],
            "cached_from": s.cached_from or "",
        }
        for s in stages
    ]


def _markdown(
    pipeline: str, stages: list[StageResult], seconds: float, data: dict[str, Any]
) -> str:
    lines = [f"## {pipeline} pipeline: {seconds:.1f} s", "", "| stage | status | s | detail |"]
    lines.append("|---|---|---|---|")
    for s in stages:
        icon = STATUS_ICONS.get(s.status.value, "")
        detail = (s.detail or "").replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(f"| {s.name} | {icon} {s.status.value} | {s.seconds:.1f} | {detail} |")
    for key, value in data.items():
        lines += ["", f"**{key}**: `{value}`"]
    failed = [s for s in stages if s.status.value == "failed" and s.tail]
    for s in failed:
        lines += ["", f"### {s.name}: last lines", "```", s.tail[-3000:], "```"]
    return "\n".join(lines)


async def publish_summary(
    pipeline: str, stages: list[StageResult], seconds: float, data: dict[str, Any]
) -> None:
    if FlowRunContext.get() is None:
        return
    await acreate_table_artifact(
        key=summary_key(pipeline),
        table=stage_rows(stages),
        description=f"{pipeline} pipeline stages",
    )
    await acreate_markdown_artifact(
        key=f"{pipeline}-report",
        markdown=_markdown(pipeline, stages, seconds, data),
        description=f"{pipeline} pipeline report",
    )
