"""`gantry dora`: delivery performance computed from the recorded production releases."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer


def dora(
    repo: Annotated[
        str | None, typer.Option("--repo", help="owner/name or slug; default: every repository.")
    ] = None,
    since: Annotated[str, typer.Option(help="Window: 30d, 12h, 2w or an ISO date.")] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object for scripts.")] = False,
) -> None:
    """Deployment frequency, lead time, change failure rate and time to restore."""
    from rich.console import Console

    from core.identity import slugify
    from core.settings import StackSettings
    from deployments.cli.console import prefect_settings
    from deployments.dora import dora_command
    from flows.records.dora import deployment_records
    from flows.records.store import all_releases

    settings = StackSettings()
    with prefect_settings(settings):
        try:
            releases = asyncio.run(all_releases())
        except Exception as exc:
            typer.echo(f"error: cannot read release records from {settings.prefect_url}: {exc}")
            raise typer.Exit(2) from None
    records = deployment_records(releases)
    code = dora_command(records, since, slugify(repo) if repo else None, as_json, console=Console())
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command()(dora)
