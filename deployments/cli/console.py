"""What the `gantry` commands share when they run: consoles, tables, the stack they talk to.

Commands import it when they run, not for `gantry --help` (rich alone costs more than a tenth
of a second); settings, the stack and Prefect are imported by the functions that use them.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from core.settings import StackSettings
    from deployments.runs import RunOutcome


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        # A file or a pipe: never wrap, so an image reference, a digest or a URL stays whole
        # on one line and can be copied from a CI log.
        console.soft_wrap = True
    return console


out = _console(stderr=False)
err = _console(stderr=True)

STATUS_STYLE = {
    "passed": "green",
    "cached": "cyan",
    "failed": "red",
    "skipped": "yellow",
    "cancelled": "magenta",
}


def print_json(payload: Any) -> None:
    """One JSON document on stdout, never wrapped nor coloured (scripts parse it)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def show_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None
) -> None:
    """A rich table on a terminal; elsewhere plain aligned lines that are never wrapped.

    Cells may hold rich markup (styles); plain lines drop it.
    """
    if out.is_terminal:
        from rich.table import Table

        table = Table(*headers, title=title)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    from rich.text import Text

    plain = [[Text.from_markup(cell).plain for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in plain) for i in range(len(headers))]
    if title:
        out.print(title, highlight=False, markup=False)
    for row in plain:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.print(line.rstrip(), highlight=False, markup=False)


@contextlib.contextmanager
def prefect_settings(settings: StackSettings) -> Iterator[None]:
    """Point this process's Prefect client at the local stack's server, with its credential."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from core.settings import prefect_env

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
    from core.ports import StackError
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
                err.print(f"  {message}", highlight=False)

        try:
            stack.up(progress, warn)
        except StackError as exc:
            raise fail(str(exc)) from None


def print_outcome(outcome: RunOutcome, as_json: bool) -> None:
    if as_json:
        print_json(outcome.model_dump(mode="json"))
        return
    rows = []
    for stage in outcome.stages:
        style = STATUS_STYLE.get(stage.status, "default")
        status = f"[{style}]{stage.status}[/{style}]"
        rows.append([stage.name, status, f"{stage.seconds:.1f}", stage.detail])
    show_table(["stage", "status", "seconds", "detail"], rows, f"{outcome.pipeline} pipeline")
    images = outcome.data.get("images")
    for name, reference in images.items() if isinstance(images, dict) else []:
        out.print(f"image {name}: {reference}", highlight=False, markup=False)
    verdict = "[green]passed[/green]" if outcome.passed else f"[red]{outcome.state}[/red]"
    out.print(f"{outcome.flow_run_name}: {verdict} in {outcome.seconds:.1f} s {outcome.message}")
    out.print(f"See the run in the Prefect UI: {outcome.url}", highlight=False)
