"""The `gantry` command line: the local stack, pipeline runs, and their results."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from deployments.processes import StackError
from deployments.settings import MERGE_DEPLOYMENT, PR_DEPLOYMENT, StackSettings, prefect_env

if TYPE_CHECKING:  # Prefect loads slowly: the commands that need it import it when they run.
    from prefect.client.schemas.objects import FlowRun

    from deployments.runs import RunOutcome

app = typer.Typer(
    help="Gantry: pull-request, merge and release pipelines on Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
run_app = typer.Typer(help="Run a pipeline through its deployment and wait for the result.")
app.add_typer(run_app, name="run")

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
    """Point this process's Prefect client at the local stack's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = prefect_env(settings)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        yield


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def ensure_stack(settings: StackSettings, quiet: bool = False) -> None:
    from deployments.stack import Stack

    stack = Stack(settings)
    if stack.is_up():
        return
    with err.status("starting the local stack") as status:

        def progress(message: str) -> None:
            status.update(message)
            if not quiet:
                err.print(f"  {message}")

        try:
            stack.up(progress)
        except StackError as exc:
            raise fail(str(exc)) from None


@app.command()
def up(as_json: JsonFlag = False) -> None:
    """Start the local stack (idempotent) and print where it answers."""
    settings = StackSettings()
    ensure_stack(settings, quiet=as_json)
    status(as_json)
    if not as_json:
        out.print(f"Prefect UI: [bold]{settings.prefect_url}[/bold]")


@app.command()
def down(as_json: JsonFlag = False) -> None:
    """Stop exactly what `gantry up` started."""
    from deployments.stack import Stack

    stopped = Stack(StackSettings()).down()
    if as_json:
        out.print_json(json.dumps({"stopped": stopped}))
    else:
        out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Each part of the local stack, its URL and whether it is up (exit 1 when any is down)."""
    from deployments.runs import last_runs
    from deployments.stack import Stack

    settings = StackSettings()
    parts = Stack(settings).status()
    runs: dict[str, dict[str, str]] = {}
    if parts[0].up:  # the Prefect server answers: show the newest run of each pipeline
        with prefect_settings(settings):
            runs = asyncio.run(last_runs(settings.prefect_url))
    if as_json:
        payload = {
            "parts": {p.name: {"url": p.url, "up": p.up, "detail": p.detail} for p in parts},
            "up": all(p.up for p in parts),
            "last_runs": runs,
        }
        out.print_json(json.dumps(payload))
    else:
        table = Table("part", "url", "up")
        for p in parts:
            table.add_row(p.name, p.url, "[green]up[/green]" if p.up else "[red]down[/red]")
        out.print(table)
        if runs:
            recent = Table("pipeline", "last run", "state", "url")
            for pipeline, run in runs.items():
                recent.add_row(pipeline, run["name"], run["state"], run["url"])
            out.print(recent)
    if not all(p.up for p in parts):
        raise typer.Exit(1)


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


def trigger(pipeline: str, deployment: str, parameters: dict[str, Any], as_json: bool) -> None:
    outcome = follow(pipeline, deployment, parameters, as_json)
    print_outcome(outcome, as_json)
    raise typer.Exit(0 if outcome.passed else 1)


def target(repo: str, sha: str) -> tuple[str, str]:
    """The repository and full commit SHA the user named, or a usage error."""
    from deployments.runs import RunError, resolve_target

    try:
        return resolve_target(repo, sha)
    except RunError as exc:
        raise fail(str(exc)) from None


@run_app.command("pr")
def run_pr(
    repo: Annotated[str, typer.Option(help="Path or clone URL of the repository.")],
    sha: Annotated[str, typer.Option(help="Commit to verify (a ref or short SHA for a path).")],
    pr: Annotated[int | None, typer.Option(help="Pull request number.")] = None,
    head_ref: Annotated[str | None, typer.Option(help="Branch of the pull request.")] = None,
    fork: Annotated[bool, typer.Option(help="The head is a fork: no secrets, no push.")] = False,
    no_cache: NoCacheFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the pull-request pipeline on one commit; exit 0 when it passed, 1 when it failed."""
    repository, full_sha = target(repo, sha)
    parameters = {
        "repository": repository,
        "sha": full_sha,
        "pr_number": pr,
        "head_ref": head_ref,
        "fork": fork,
        "no_cache": no_cache,
    }
    trigger("pr", PR_DEPLOYMENT, parameters, as_json)


@run_app.command("merge")
def run_merge(
    repo: Annotated[str, typer.Option(help="Path or clone URL of the repository.")],
    sha: Annotated[str, typer.Option(help="Merged commit (a ref or short SHA for a path).")],
    ref: Annotated[str, typer.Option(help="Branch that was merged into.")] = "main",
    repository_name: Annotated[
        str | None, typer.Option("--name", help="owner/name, for image and record names.")
    ] = None,
    no_cache: NoCacheFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Run the merge pipeline: verify, push by digest, deploy to staging, E2E."""
    repository, full_sha = target(repo, sha)
    parameters = {
        "repository": repository,
        "sha": full_sha,
        "ref": ref,
        "repository_name": repository_name,
        "no_cache": no_cache,
    }
    trigger("merge", MERGE_DEPLOYMENT, parameters, as_json)


@app.command()
def demo(
    manual: Annotated[
        bool, typer.Option("--manual", help="Wait for your approval instead of approving.")
    ] = False,
) -> None:
    """The sample service through PR, merge, staging and an approved release to production."""
    from deployments.demo import run_demo

    raise typer.Exit(run_demo(out, err, manual))


def main() -> None:
    from deployments import cli_observe, cli_release, cli_webhooks

    cli_release.register(app)
    cli_observe.register(app)
    app.add_typer(cli_webhooks.app, name="webhooks")
    app()
