"""`gantry release`, `approve`, `reject`, `rollback`, `policy show`: production releases."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deployments.cli.options import JsonFlag

if TYPE_CHECKING:  # Prefect loads slowly: the commands import it when they run.
    from prefect.client.schemas.objects import FlowRun

    from core.approvals import Decision
    from deployments.runs import RunOutcome

RepoOption = Annotated[
    str | None, typer.Option("--repo", help="Path or clone URL of the repository.")
]
NameOption = Annotated[str | None, typer.Option("--name", help="owner/name of the repository.")]


def follow_release(parameters: dict[str, Any], wait: bool, as_json: bool) -> RunOutcome:
    from core.links import flow_run_url
    from core.settings import RELEASE_DEPLOYMENT, StackSettings
    from deployments.cli.console import err
    from deployments.cli.follow import follow

    prefect_url = StackSettings().prefect_url

    async def paused(flow_run: FlowRun) -> bool:
        err.print(
            f"\n[bold]{flow_run.name} waits for an approval[/bold]: answer in the Prefect UI "
            f"({flow_run_url(flow_run.id, prefect_url)}) or with\n"
            f"  gantry approve {flow_run.id} [--key ~/.ssh/id_ed25519]\n"
            f"  gantry reject {flow_run.id} --reason TEXT\n",
            highlight=False,
        )
        return wait

    return follow("release", RELEASE_DEPLOYMENT, parameters, as_json, on_paused=paused)


def finish_release(outcome: RunOutcome, as_json: bool) -> None:
    from deployments.cli.console import print_outcome

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
    from deployments.cli.console import fail

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
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Put back the newest good release whose digests production does not serve now.

    It waits for an approval unless the worker's release policy allows rollback without one.
    """
    from deployments.cli.console import fail

    if env != "production":
        raise fail("only --env production can be rolled back (staging follows main)")
    if not repo and not name:
        raise fail("name the repository with --repo or --name")
    parameters = {
        "repository": repo,
        "repository_name": name,
        "rollback": True,
        "triggered_by": "gantry rollback",
    }
    finish_release(follow_release(parameters, wait, as_json), as_json)


def _answer(run_id: str, decision: Decision, reason: str, key: Path | None, as_json: bool) -> None:
    from core.approvals import default_key
    from core.settings import StackSettings
    from deployments.cli.console import fail, out, prefect_settings, print_json
    from deployments.runs import RunError, answer_approval

    signing_key = key or default_key()
    if signing_key is None:
        raise fail("no SSH key: pass --key, or make ~/.ssh/id_ed25519 (ssh-keygen -t ed25519)")
    settings = StackSettings()
    with prefect_settings(settings):
        try:
            outcome = asyncio.run(answer_approval(run_id, decision, reason, signing_key))
        except RunError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(outcome.model_dump(mode="json"))
    else:
        out.print(outcome.message, highlight=False)
    raise typer.Exit(0 if outcome.accepted else 1)


RunArgument = Annotated[str, typer.Argument(help="The release's flow run id.")]
KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        help="Your SSH private key (default ~/.ssh/id_ed25519, then id_ecdsa, id_rsa); "
        "its public key must be on the release policy's allowed signers.",
    ),
]


def approve(
    run_id: RunArgument,
    reason: Annotated[str, typer.Option(help="A note kept in the release record.")] = "",
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Approve a waiting release with a signed statement (exit 1 when it is refused)."""
    _answer(run_id, "approve", reason, key, as_json)


def reject(
    run_id: RunArgument,
    reason: Annotated[str, typer.Option(help="Why it must not ship.")],
    key: KeyOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Reject a waiting release with a signed statement: nothing is deployed."""
    _answer(run_id, "reject", reason, key, as_json)


policy_app = typer.Typer(
    help="The release policy the worker enforces.", no_args_is_help=True, rich_markup_mode=None
)


@policy_app.command("show")
def show_policy(as_json: JsonFlag = False) -> None:
    """Print the release policy file the worker would use (exit 1 when missing or invalid)."""
    from core.release_policy import PolicyError, load_release_policy, policy_path
    from deployments.cli.console import err, out, print_json

    path = policy_path()
    try:
        policy = load_release_policy(path)
    except PolicyError as exc:
        if as_json:
            print_json({"path": str(path), "valid": False, "error": str(exc)})
        else:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        shown = {"path": str(path), "valid": True, "principals": policy.principals()}
        print_json({**shown, **policy.model_dump(mode="json")})
        return
    out.print(f"release policy: {path}", highlight=False)
    out.print(f"  approvers (allowed signers): {', '.join(policy.principals())}", highlight=False)
    out.print(f"  approval timeout: {policy.approval_timeout} s", highlight=False)
    out.print(f"  self-approval allowed: {policy.allow_self_approval}", highlight=False)
    rollback = policy.allow_rollback_without_approval
    out.print(f"  rollback without approval: {rollback}", highlight=False)
    out.print(f"  clock skew allowed: {policy.max_clock_skew} s", highlight=False)


def register(app: typer.Typer) -> None:
    for command in (release, rollback, approve, reject):
        app.command()(command)
    app.add_typer(policy_app, name="policy")
