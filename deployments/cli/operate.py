"""`gantry runs`, `logs`, `cancel`, `retry`: an operator's view of the pipelines' runs.

RUN is a flow run's id or its name (the newest run of that name).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from deployments.cli.options import JsonFlag

if TYPE_CHECKING:
    from deployments.runs import LogLine

RunArgument = Annotated[str, typer.Argument(metavar="RUN", help="The flow run's id or name.")]
PIPELINES = ("pr", "merge", "release")
STATE_STYLE = {"Completed": "green", "Failed": "red", "Crashed": "red", "Cancelled": "magenta"}


def runs(
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo", help="Only this repository: owner/name, clone URL, or a local clone."
        ),
    ] = None,
    pipeline: Annotated[
        str | None, typer.Option("--pipeline", help="Only this pipeline: pr, merge or release.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many runs at most.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Recent runs of the pipelines, newest first, with their state and page in the UI."""
    from deployments.cli.console import fail, print_json, show_table

    if pipeline is not None and pipeline not in PIPELINES:
        raise fail(f"--pipeline must be one of {', '.join(PIPELINES)}, not {pipeline!r}")
    from core.settings import StackSettings
    from deployments.cli.api import ApiError, recent_runs

    try:
        found = recent_runs(StackSettings(), pipeline, repo, limit)
    except ApiError as exc:
        raise fail(f"cannot read the runs: {exc}", 1) from None
    if as_json:
        print_json({"runs": found})
        return
    rows = []
    for run in found:
        style = STATE_STYLE.get(run["state"], "default")
        state = f"[{style}]{run['state']}[/{style}]"
        rows.append([run["name"], run["pipeline"], state, run["repository"], run["url"]])
    show_table(["run", "pipeline", "state", "repository", "url"], rows)


def logs(
    run: RunArgument,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Only this stage's lines (lint, unit, ...).")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the run ends.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """A run's log with each step's output, line by line; --follow prints on until it ends."""
    from core.settings import StackSettings
    from deployments.cli.console import err, fail, out, prefect_settings, print_json
    from deployments.runs import RunError, run_logs

    lines: list[LogLine] = []

    def emit(line: LogLine) -> None:
        if as_json:
            lines.append(line)
            return
        # Plain text: the step's output is never read as markup, and never wrapped. Its lines
        # already name their stage ("[lint] ...").
        out.print(f"{line.timestamp:%H:%M:%S} {line.message}", markup=False, highlight=False)

    with prefect_settings(StackSettings()):
        try:
            flow_run = asyncio.run(run_logs(run, emit, stage=stage, follow=follow))
        except RunError as exc:
            raise fail(str(exc)) from None
    state = flow_run.state.name if flow_run.state else "unknown"
    if as_json:
        payload = {
            "flow_run_id": str(flow_run.id),
            "flow_run_name": flow_run.name,
            "state": state,
            "lines": [line.model_dump(mode="json") for line in lines],
        }
        print_json(payload)
    elif follow:
        err.print(f"{flow_run.name}: {state}", highlight=False)


def cancel(
    run: RunArgument,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for Cancelled (0: do not wait).", min=0)
    ] = 30.0,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a run as Prefect does (Cancelling; its worker stops it); exit 1 if it ran on."""
    from core.settings import StackSettings
    from deployments.cli.console import fail, out, prefect_settings, print_json
    from deployments.runs import RunError, cancel_run

    with prefect_settings(StackSettings()):
        try:
            outcome = asyncio.run(cancel_run(run, wait))
        except RunError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(outcome.model_dump(mode="json"))
    else:
        out.print(f"{outcome.flow_run_name}: {outcome.state}", highlight=False)
    ended = outcome.cancelled or (wait == 0 and outcome.state == "Cancelling")
    raise typer.Exit(0 if ended else 1)


def retry(run: RunArgument, as_json: JsonFlag = False) -> None:
    """Run RUN's pipeline again with its parameters (stages that passed come from the cache).

    The new run is tagged gantry:retry-of:<RUN's id>; exit 0 when it passed.
    """
    from deployments.cli.console import print_outcome
    from deployments.cli.follow import follow_started
    from deployments.runs import start_retry

    outcome = follow_started(f"a retry of {run}", lambda: start_retry(run), as_json)
    print_outcome(outcome, as_json)
    raise typer.Exit(0 if outcome.passed else 1)


def register(app: typer.Typer) -> None:
    for command in (runs, logs, cancel, retry):
        app.command()(command)
