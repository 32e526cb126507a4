"""`gantry notifications apply`: the chat notification block and automations, on any server.

`gantry up` applies them to the local stack; a production deploy runs this command with the
cluster's ``PREFECT_API_URL`` and ``PREFECT_API_AUTH_STRING`` (as for ``prefect deploy``) and
``GANTRY_SLACK_WEBHOOK_URL``. Without ``PREFECT_API_URL`` it applies to the local stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import typer

from deployments.cli.options import JsonFlag

app = typer.Typer(
    help="Chat notifications (Slack) through Prefect automations.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("apply")
def apply(as_json: JsonFlag = False) -> None:
    """Create or update the Slack block and the notification automations (by name; idempotent).
    Without GANTRY_SLACK_WEBHOOK_URL, remove them: notifications are off."""
    from core.redact import redact
    from core.settings import StackSettings
    from deployments.cli.console import fail, out, prefect_settings, print_json
    from deployments.notifications import apply_notifications_from_env

    target = (
        contextlib.nullcontext()
        if os.environ.get("PREFECT_API_URL")
        else prefect_settings(StackSettings())
    )
    try:
        with target:
            report = asyncio.run(apply_notifications_from_env())
    except ValueError as exc:  # the variable's name, never its value
        raise fail(str(exc)) from None
    except Exception as exc:
        raise fail(f"cannot apply chat notifications: {redact(str(exc))}") from None
    if as_json:
        print_json(report.as_dict())
        return
    out.print(report.summary(), highlight=False, markup=False)
    for name in report.automations:
        out.print(f"  {name}", highlight=False, markup=False)
    for name in report.removed:
        out.print(f"  removed {name}", highlight=False, markup=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="notifications")
