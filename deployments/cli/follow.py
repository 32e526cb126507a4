"""Following a pipeline run: a live table of stages on a terminal, plain lines elsewhere.

The first line is printed before rich, the settings, the stack's check and Prefect are loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from deployments.runs import Progress, RunOutcome, Watch

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


def follow(
    pipeline: str,
    deployment: str,
    parameters: dict[str, Any],
    as_json: bool,
    on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
) -> RunOutcome:
    """Start one run of ``deployment`` on the local stack and follow it, showing its progress."""

    async def start() -> tuple[FlowRun, str]:
        from deployments.runs import start_run

        return await start_run(deployment, parameters), pipeline

    return follow_started(f"the {pipeline} pipeline", start, as_json, on_paused)


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
