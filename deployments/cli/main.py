"""The `gantry` command line: the local stack, pipeline runs, and their results.

`gantry --help` and argument errors load typer and rich only: each command imports what it
needs (settings, the stack, Prefect) when it runs.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Annotated, Any

import typer

from deployments.cli.options import JsonFlag, NoCacheFlag

app = typer.Typer(
    help="Gantry: pull-request, merge and release pipelines on Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: typer's rich help loads a markdown parser, more than --help may cost.
    rich_markup_mode=None,
)
run_app = typer.Typer(
    help="Run a pipeline through its deployment and wait for the result.", rich_markup_mode=None
)
app.add_typer(run_app, name="run")


@app.command()
def up(as_json: JsonFlag = False) -> None:
    """Start the local stack (idempotent) and print where it answers."""
    from core.settings import StackSettings
    from deployments.cli.console import ensure_stack, out

    settings = StackSettings()
    ensure_stack(settings, quiet=as_json)
    status(as_json)
    if not as_json:
        out.print(f"Prefect UI: [bold]{settings.prefect_url}[/bold]")


@app.command()
def down(
    as_json: JsonFlag = False,
    keep_environments: Annotated[
        bool,
        typer.Option("--keep-environments", help="Leave staging and production serving."),
    ] = False,
) -> None:
    """Stop what `gantry up` started: in-flight runs are cancelled, their sandboxes removed, the
    local environments stopped (`gantry up` serves them again)."""
    from core.settings import StackSettings
    from deployments.cli.console import out, print_json
    from deployments.stack import Stack

    report = Stack(StackSettings()).down(keep_environments=keep_environments)
    if as_json:
        print_json(report.as_dict())
    else:
        for line in report.lines():
            out.print(line, highlight=False)


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Each part of the local stack, its URL and whether it is up (exit 1 when any is down)."""
    from core.settings import StackSettings
    from deployments.cli.api import ApiError, last_runs
    from deployments.cli.console import err, out, print_json, show_table
    from deployments.stack import Stack

    settings = StackSettings()
    parts = Stack(settings).status()
    runs: dict[str, dict[str, str]] = {}
    if parts[0].up:  # the Prefect server answers: show the newest run of each pipeline
        try:
            runs = last_runs(settings)
        except ApiError as exc:
            warning = f"[yellow]warning:[/yellow] cannot read the last runs: {exc}"
            err.print(warning, highlight=False)
    if as_json:
        payload = {
            "home": str(settings.state_dir),
            "parts": {p.name: {"url": p.url, "up": p.up, "detail": p.detail} for p in parts},
            "up": all(p.up for p in parts),
            "last_runs": runs,
        }
        print_json(payload)
    else:
        out.print(f"state folder: {settings.state_dir}", highlight=False)
        rows = [[p.name, p.url, "[green]up[/green]" if p.up else "[red]down[/red]"] for p in parts]
        show_table(["part", "url", "up"], rows)
        if runs:
            rows = [[p, r["name"], r["state"], r["url"]] for p, r in runs.items()]
            show_table(["pipeline", "last run", "state", "url"], rows)
    if not all(p.up for p in parts):
        raise typer.Exit(1)


@app.command("env")
def env(as_json: JsonFlag = False) -> None:
    """Shell exports that point Prefect's own CLI and scripts at the local stack.

    Use as eval "$(gantry env)". The output holds the Prefect API credential: never log it.
    """
    from core.settings import StackSettings

    settings = StackSettings()
    values = {
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_API_AUTH_STRING": settings.api_auth_string(),
    }
    # Plain echo, not rich: rich would wrap long lines and read [brackets] as markup.
    if as_json:
        typer.echo(json.dumps(values))
        return
    for name, value in values.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


def trigger(pipeline: str, deployment: str, parameters: dict[str, Any], as_json: bool) -> None:
    from deployments.cli.follow import follow

    outcome = follow(pipeline, deployment, parameters, as_json)
    from deployments.cli.console import print_outcome

    print_outcome(outcome, as_json)
    raise typer.Exit(0 if outcome.passed else 1)


def target(repo: str, sha: str) -> tuple[str, str]:
    """The repository and full commit SHA the user named, or a usage error."""
    from deployments.cli.target import TargetError, resolve_target

    try:
        return resolve_target(repo, sha)
    except TargetError as exc:
        from deployments.cli.console import fail

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
    from core.settings import PR_DEPLOYMENT

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
    from core.settings import MERGE_DEPLOYMENT

    trigger("merge", MERGE_DEPLOYMENT, parameters, as_json)


@app.command()
def demo(
    manual: Annotated[
        bool, typer.Option("--manual", help="Wait for your approval instead of approving.")
    ] = False,
) -> None:
    """The sample service through PR, merge, staging and an approved release to production."""
    from deployments.cli.console import err, out
    from deployments.demo import run_demo

    raise typer.Exit(run_demo(out, err, manual))


def main() -> None:
    from deployments.cli import notifications, observe, operate, release, supply, webhooks

    # A process started by the stack (the receiver) holds the Prefect API credential only in
    # its environment: masked in its logs from the start.
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        from core.redact import register_secret

        register_secret(os.environ["PREFECT_API_AUTH_STRING"])

    release.register(app)
    observe.register(app)
    operate.register(app)
    supply.register(app)
    notifications.register(app)
    app.add_typer(webhooks.app, name="webhooks")
    app()
