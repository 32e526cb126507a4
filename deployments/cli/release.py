"""`gantry release`, `approve`, `reject`, `rollback`: production releases from the terminal."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from prefect.client.schemas.objects import FlowRun

from core.links import flow_run_url
from core.settings import RELEASE_DEPLOYMENT, StackSettings
from deployments.cli.console import (
    JsonFlag,
    err,
    fail,
    follow,
    out,
    prefect_settings,
    print_outcome,
)
from deployments.runs import RunError, RunOutcome, answer_approval

RepoOption = Annotated[
    str | None, typer.Option("--repo", help="Path or clone URL of the repository.")
]
NameOption = Annotated[str | None, typer.Option("--name", help="owner/name of the repository.")]


def follow_release(parameters: dict[str, Any], wait: bool, as_json: bool) -> RunOutcome:
    prefect_url = StackSettings().prefect_url

    async def paused(flow_run: FlowRun) -> bool:
        err.print(
            f"\n[bold]{flow_run.name} waits for an approval[/bold]: answer in the Prefect UI "
            f"({flow_run_url(flow_run.id, prefect_url)}) or with\n"
            f"  gantry approve {flow_run.id} --as USER\n"
            f"  gantry reject {flow_run.id} --as USER --reason TEXT\n",
            highlight=False,
        )
        return wait

    return follow("release", RELEASE_DEPLOYMENT, parameters, as_json, on_paused=paused)


def finish_release(outcome: RunOutcome, as_json: bool) -> None:
    print_outcome(outcome, as_json)
    if outcome.paused:
        raise typer.Exit(0)
    raise typer.Exit(0 if outcome.passed else 1)


def release(
    repo: RepoOption = None,
    name: NameOption = None,
    candidate: Annotated[
        str | None, typer.Option(help="Release candidate id (default: the newest).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the run through the approval.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Promote a staging-verified release candidate to production (after an approval)."""
    if not repo and not name:
        raise fail("name the repository with --repo or --name")
    parameters = {
        "repository": repo,
        "repository_name": name,
        "candidate_id": candidate,
        "triggered_by": "gantry release",
    }
    finish_release(follow_release(parameters, wait, as_json), as_json)


def rollback(
    env: Annotated[str, typer.Option("--env", help="Only production can be rolled back.")],
    repo: RepoOption = None,
    name: NameOption = None,
    no_approval: Annotated[
        bool, typer.Option("--no-approval", help="Skip the gate, if the release policy allows.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Put back the newest good release whose digests production does not serve now."""
    if env != "production":
        raise fail("only --env production can be rolled back (staging follows main)")
    if not repo and not name:
        raise fail("name the repository with --repo or --name")
    parameters = {
        "repository": repo,
        "repository_name": name,
        "rollback": True,
        "skip_approval": no_approval,
        "triggered_by": "gantry rollback",
    }
    finish_release(follow_release(parameters, wait, as_json), as_json)


def _answer(run_id: str, who: str, approve: bool, reason: str, as_json: bool) -> None:
    settings = StackSettings()
    with prefect_settings(settings):
        try:
            outcome = asyncio.run(answer_approval(run_id, who, approve, reason))
        except RunError as exc:
            raise fail(str(exc)) from None
    if as_json:
        out.print_json(outcome.model_dump_json())
    else:
        out.print(outcome.message)
    raise typer.Exit(0 if outcome.accepted else 1)


AsOption = Annotated[str, typer.Option("--as", help="Your name, as on the release allowlist.")]


def approve(
    run_id: Annotated[str, typer.Argument(help="The release's flow run id.")],
    who: AsOption,
    reason: Annotated[str, typer.Option(help="A note kept in the release record.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Approve a waiting release (exit 1 when the answer is refused)."""
    _answer(run_id, who, True, reason, as_json)


def reject(
    run_id: Annotated[str, typer.Argument(help="The release's flow run id.")],
    who: AsOption,
    reason: Annotated[str, typer.Option(help="Why it must not ship.")],
    as_json: JsonFlag = False,
) -> None:
    """Reject a waiting release: nothing is deployed."""
    _answer(run_id, who, False, reason, as_json)


def register(app: typer.Typer) -> None:
    for command in (release, rollback, approve, reject):
        app.command()(command)
