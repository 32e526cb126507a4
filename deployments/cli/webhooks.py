"""`gantry webhooks serve | reconcile`: the GitHub webhook receiver and missed deliveries."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated

import typer

app = typer.Typer(help="The GitHub webhook receiver.", no_args_is_help=True, rich_markup_mode=None)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default GANTRY_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default GANTRY_WEBHOOK_PORT, 8787).")
    ] = None,
) -> None:
    """Serve POST /webhooks/github (and /healthz, /readyz) and dispatch deliveries to Prefect."""
    from core.ports import StackError
    from webhooks.server import serve as run
    from webhooks.settings import SettingsError, load_settings
    from webhooks.store import StoreError

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["webhook_port"] = port
    try:
        run(load_settings(**overrides))
    except (SettingsError, StackError, StoreError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def reconcile(
    repo: Annotated[
        str | None, typer.Option("--repo", help="owner/name on GitHub (with --hook-id).")
    ] = None,
    hook_id: Annotated[
        int | None, typer.Option("--hook-id", help="The repository webhook's id on GitHub.")
    ] = None,
    app_hook: Annotated[
        bool,
        typer.Option(
            "--app", help="The GitHub App's webhook instead (needs the App's credentials)."
        ),
    ] = False,
    since: Annotated[str, typer.Option(help="How far back: 24h, 7d, or an ISO date.")] = "24h",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ask GitHub to redeliver the deliveries the receiver never recorded, of a repository's
    webhook (--repo and --hook-id) or of the GitHub App's webhook (--app)."""
    from blocks.github import load_github_credentials
    from clients.github import AppHook, GitHubClient, HookSource, RepoHook
    from clients.github_errors import GitHubError
    from flows.records.dora import parse_since
    from webhooks.reconcile import reconcile as run_reconcile
    from webhooks.settings import StoreSettings
    from webhooks.store import StoreError, open_store

    hook: HookSource
    if app_hook:
        if repo is not None or hook_id is not None:
            raise _fail("--app reads the GitHub App's webhook: give it without --repo/--hook-id")
        hook = AppHook()
    elif repo is None or hook_id is None:
        raise _fail("give --repo and --hook-id (a repository's webhook), or --app (the App's)")
    else:
        hook = RepoHook(repo, hook_id)
    # Reading the store needs no secret: only its location.
    url = StoreSettings().store_url
    try:
        store = open_store(url)
    except StoreError as exc:
        raise _fail(str(exc)) from None
    window = parse_since(since)
    start = window if isinstance(window, datetime) else datetime.now(UTC) - window

    async def go() -> list[str]:
        credentials = await load_github_credentials()
        if credentials is None:
            raise _fail("no GitHub credentials (GANTRY_GITHUB_TOKEN or the gantry-github block)")
        if app_hook and not credentials.uses_app:
            # A token cannot read the App's webhook; GitHub would only answer 401.
            raise _fail(
                "--app needs GitHub App credentials (GANTRY_GITHUB_APP_ID, "
                "GANTRY_GITHUB_APP_PRIVATE_KEY, GANTRY_GITHUB_APP_INSTALLATION_ID or the "
                "gantry-github block's App fields), not a token"
            )
        async with GitHubClient.from_credentials(credentials) as client:
            return await run_reconcile(client, hook, store.is_recorded, start)

    try:
        redelivered = asyncio.run(go())
    except GitHubError as exc:
        # GitHub's answer (bad credentials, no such hook): said plainly, never a traceback.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"redelivered": redelivered}))
    else:
        typer.echo(f"redelivered {len(redelivered)} deliveries")
