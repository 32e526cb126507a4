"""What every `gantry` command shares: its consoles, flags, the stack it talks to, run progress."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from core.ports import StackError
from core.settings import StackSettings, prefect_env

if TYPE_CHECKING:  # Prefect loads slowly: the commands that need it import it when they run.
    from prefect.client.schemas.objects import FlowRun

    from deployments.runs import RunOutcome

out = Console()
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object for scripts.")]
NoCacheFlag = Annotated[
    bool, typer.Option("--no-cache", help="Run every step afresh instead of re-using results.")
]

STATUS_STYLE = {
    "passed": "green",
    "cached": "cyan",
    "failed": "red",
    "skipped": "yellow",
    "cancelled": "magenta",
}


@contextlib.contextmanager
def prefect_settings(settings: StackSettings) -> Iterator[None]:
    """Point this process's Prefect client at the local stack's server, with its credential."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    env = prefect_env(settings)
    updates = {
        PREFECT_API_URL: env["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"],
    }
    with temporary_settings(updates=updates):
        yield


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def ensure_stack(settings: StackSettings, quiet: bool = False) -> None:
    from deployments.stack import Stack

    def warn(message: str) -> None:
        # Shown even with --json: the operator must hear that a secret was exposed.
        err.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    stack = Stack(settings)
    if stack.is_up():
        try:  # a running stack's state folder is checked all the same
            stack.secure_state(warn)
        except StackError as exc:
            raise fail(str(exc)) from None
        return
    with err.status("starting the local stack") as status:

        def progress(message: str) -> None:
            status.update(message)
            if not quiet:
                err.print(f"  {message}")

        try:
            stack.up(progress, warn)
        except StackError as exc:
            raise fail(str(exc)) from None


def print_outcome(outcome: Any, as_json: bool) -> None:
    if as_json:
        out.print_json(outcome.model_dump_json())
        return
    table = Table("stage", "status", "seconds", "detail", title=f"{outcome.pipeline} pipeline")
    for stage in outcome.stages:
        style = STATUS_STYLE.get(stage.status, "")
        table.add_row(
            stage.name, f"[{style}]{stage.status}[/{style}]", f"{stage.seconds:.1f}", stage.detail
        )
    out.print(table)
    verdict = "[green]passed[/green]" if outcome.passed else f"[red]{outcome.state}[/red]"
    out.print(f"{outcome.flow_run_name}: {verdict} in {outcome.seconds:.1f} s {outcome.message}")
    out.print(f"See the run in the Prefect UI: {outcome.url}")


def follow(
    pipeline: str,
    deployment: str,
    parameters: dict[str, Any],
    as_json: bool,
    on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
) -> RunOutcome:
    """Start one run of ``deployment`` on the local stack and follow it, showing its progress."""
    from deployments.runs import RunError, run_pipeline

    settings = StackSettings()
    ensure_stack(settings, quiet=as_json)
    with prefect_settings(settings), err.status(f"running the {pipeline} pipeline") as spinner:

        def progress(message: str) -> None:
            spinner.update(message)
            if not as_json:
                err.print(f"  {message}", highlight=False)

        try:
            return asyncio.run(
                run_pipeline(
                    pipeline,
                    deployment,
                    parameters,
                    settings.prefect_url,
                    progress,
                    on_paused=on_paused,
                )
            )
        except RunError as exc:
            raise fail(str(exc)) from None
