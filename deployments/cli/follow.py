"""Following a pipeline run: a live table of stages on a terminal, plain lines elsewhere.

The first line is printed before rich, the settings, the stack's check and Prefect are loaded.
`gantry run pr` and `merge` start and poll their run through Prefect's REST API with httpx
(deployments.cli.api): Prefect's client costs seconds of imports, more than a cached re-run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from core.settings import StackSettings
    from deployments.cli.api import Progress, RunOutcome, Watch

# A cached re-run ends within a second: a short poll sees its end soon after it comes.
POLL_SECONDS = 0.2
# Pipelines whose result carries more than its stages (images, URLs): read through Prefect once
# the run has ended, as the summary table holds only the stages.
DATA_PIPELINES = {"merge", "release"}

STATE_STYLE = {
    "completed": "green",
    "cached": "cyan",
    "running": "yellow",
    "failed": "red",
    "crashed": "red",
    "cancelled": "magenta",
}


def _stage_table(title: str, state: str, stages: list[tuple[str, str]]) -> Any:
    from rich.table import Table

    table = Table("stage", "state", title=f"{title}: {state}", title_justify="left")
    for name, stage_state in stages:
        style = STATE_STYLE.get(stage_state, "default")
        table.add_row(name, f"[{style}]{stage_state}[/{style}]")
    return table


@contextmanager
def run_display(title: str, as_json: bool) -> Iterator[tuple[Progress, Watch | None]]:
    """What a followed run reports through: ``progress`` for messages, ``watch`` for stages.

    On a terminal a live table (``watch``); elsewhere one plain line per change (``watch`` is
    None: the runner turns changes into ``progress`` lines). With --json, stderr stays quiet
    but for a spinner on a terminal.
    """
    from deployments.cli.console import err

    if as_json:
        with err.status(title) as spinner:
            yield (lambda message: spinner.update(message)), None
        return
    if not err.is_terminal:
        yield (lambda message: err.print(f"  {message}", highlight=False)), None
        return
    from rich.live import Live

    with Live(_stage_table(title, "Pending", []), console=err, auto_refresh=False) as live:

        def progress(message: str) -> None:
            live.console.print(f"  {message}", highlight=False)

        def watch(state: str, stages: list[tuple[str, str]]) -> None:
            live.update(_stage_table(title, state, stages), refresh=True)

        yield progress, watch


def follow_by_api(
    settings: StackSettings,
    pipeline: str,
    deployment: str,
    parameters: dict[str, Any],
    progress: Progress,
    watch: Watch | None = None,
    timeout: float = 3600.0,
) -> RunOutcome:
    """Create a flow run of ``deployment`` and follow it to its final state with httpx alone.

    Stages come from the run's summary table; ``data`` stays empty (see DATA_PIPELINES).
    """
    from deployments.cli.api import (
        FINAL_STATES,
        ApiError,
        RunError,
        RunOutcome,
        StageLine,
        api_client,
        create_flow_run,
        flow_run_url,
        progress_lines,
        read_flow_run,
        stage_states,
        summary_rows,
    )

    started = time.monotonic()
    watch = watch or progress_lines(progress)
    with api_client(settings) as client:
        try:
            run = create_flow_run(client, deployment, parameters)
        except ApiError as exc:
            raise RunError(f"cannot start {deployment}: {exc}") from None
        run_id: str = run["id"]
        url = flow_run_url(settings.prefect_url, run_id)
        progress(f"{pipeline} run {run['name']} created: {url}")
        while True:
            run = read_flow_run(client, run_id)
            state: dict[str, Any] = run.get("state") or {}
            kind = state.get("type")
            watch(state.get("name") or kind or "Pending", stage_states(client, run_id))
            if kind in FINAL_STATES:
                break
            if time.monotonic() - started > timeout:
                raise RunError(f"{run['name']} did not finish within {timeout:.0f} s: {url}")
            time.sleep(POLL_SECONDS)
        # The key flows.records.summary.summary_key gives the table (it imports Prefect).
        rows = summary_rows(client, run_id, f"{pipeline}-summary")
    return RunOutcome(
        pipeline=pipeline,
        flow_run_id=run_id,
        flow_run_name=run["name"],
        url=url,
        state=state.get("name") or kind,
        passed=kind == "COMPLETED",
        seconds=round(time.monotonic() - started, 3),
        message=state.get("message") or "",
        stages=[
            StageLine(
                name=r["stage"],
                status=r["status"],
                seconds=r["seconds"],
                detail=r.get("detail", ""),
            )
            for r in rows
        ],
    )


def follow(
    pipeline: str,
    deployment: str,
    parameters: dict[str, Any],
    as_json: bool,
    on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
) -> RunOutcome:
    """Start one run of ``deployment`` on the local stack and follow it, showing its progress.

    A run that may pause (``on_paused``: a release's approval) is followed through Prefect's
    client, which reads and answers the pause; any other through the REST API alone.
    """
    title = f"the {pipeline} pipeline"
    if on_paused is not None:

        async def start() -> tuple[FlowRun, str]:
            from deployments.runs import start_run

            return await start_run(deployment, parameters), pipeline

        return follow_started(title, start, as_json, on_paused)
    if not as_json:
        # Printed at once, before anything slow is loaded (settings, the stack's check).
        typer.echo(f"  starting {title}", err=True)
    from core.settings import StackSettings
    from deployments.cli.api import ApiError, RunError
    from deployments.cli.console import ensure_stack, fail, prefect_settings

    settings = StackSettings()
    ensure_stack(settings, quiet=as_json)
    with run_display(title, as_json) as display:
        try:
            outcome = follow_by_api(settings, pipeline, deployment, parameters, *display)
        except (ApiError, RunError) as exc:
            raise fail(str(exc)) from None
    if pipeline in DATA_PIPELINES:
        from deployments.runs import run_summary

        with prefect_settings(settings):
            stages, data = asyncio.run(run_summary(outcome.flow_run_id, pipeline))
        outcome = outcome.model_copy(update={"stages": stages or outcome.stages, "data": data})
    return outcome


def follow_started(
    title: str,
    start: Callable[[], Awaitable[tuple[FlowRun, str]]],
    as_json: bool,
    on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
) -> RunOutcome:
    """Start a run with ``start`` (it returns the run and its pipeline) and follow it."""
    if not as_json:
        # Printed at once, before anything slow is loaded: what follows (settings, the stack's
        # check, Prefect) takes seconds.
        typer.echo(f"  starting {title}", err=True)
    from core.settings import StackSettings
    from deployments.cli.console import ensure_stack, fail, prefect_settings

    settings = StackSettings()
    ensure_stack(settings, quiet=as_json)
    from deployments.runs import RunError, follow_run

    async def go(progress: Progress, watch: Watch | None) -> RunOutcome:
        flow_run, pipeline = await start()
        return await follow_run(
            flow_run, pipeline, settings.prefect_url, progress, on_paused=on_paused, watch=watch
        )

    with prefect_settings(settings), run_display(title, as_json) as display:
        try:
            return asyncio.run(go(*display))
        except RunError as exc:
            raise fail(str(exc)) from None
