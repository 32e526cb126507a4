"""Check steps: lint, static analysis, unit and integration tests, each the repository's argv."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from flows.config import Checks, Report, Sandbox
from flows.logs import StepLogger, step_logger
from flows.results import StageResult, StageStatus, stage_state
from flows.steps.annotations import ReportError, load_annotations, remove_report
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
    if step.report is not None and remove_report(workspace, step.report.path):
        # A committed or stale report would annotate code this run never looked at.
        logger.info("%s: removed an existing %s before the run", stage, step.report.path)
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
    data: dict[str, object] = {"flow_run_id": str(flow_run.get_id() or "")}
    if step.report is not None:
        data["annotations"] = read_annotations(stage, step.report, workspace, logger)
    return stage_state(
        StageResult(
            name=stage,
            status=status,
            seconds=round(result.seconds, 3),
            exit_code=result.exit_code,
            tail=result.tail,
            detail=detail,
            # flow_run_id: a later run that re-uses this result names the run it came from.
            data=data,
        )
    )


# Lines of annotations copied into the stage's log: with --output-file the tool prints nothing.
LOGGED_ANNOTATIONS = 20


def read_annotations(
    stage: str, report: Report, workspace: Path, logger: StepLogger
) -> list[dict[str, object]]:
    """The report's annotations as GitHub payloads; a missing or broken report gives none."""
    try:
        annotations = load_annotations(report, workspace)
    except ReportError as exc:
        logger.warning(
            "%s: report %s (%s) %s; no annotations", stage, report.path, report.format, exc
        )
        return []
    except Exception as exc:  # a parser bug on hostile input must not fail a check
        logger.warning(
            "%s: report %s (%s) could not be parsed (%s); no annotations",
            stage,
            report.path,
            report.format,
            type(exc).__name__,
        )
        return []
    logger.info("%s: %d annotation(s) from %s", stage, len(annotations), report.path)
    for annotation in annotations[:LOGGED_ANNOTATIONS]:
        first_line = annotation.message.splitlines()[0] if annotation.message else ""
        logger.info("%s:%d: %s", annotation.path, annotation.start_line, first_line[:300])
    if len(annotations) > LOGGED_ANNOTATIONS:
        logger.info("… and %d more", len(annotations) - LOGGED_ANNOTATIONS)
    return [annotation.payload() for annotation in annotations]
