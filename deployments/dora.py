"""``gantry dora``: the DORA report (``flows.records.dora``) as a terminal table or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.records.dora import DeploymentRecord, DoraReport, compute_dora, parse_since


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


def render_table(report: DoraReport) -> Table:
    """The report as a rich table for the terminal."""
    scope = report.repository or "all repositories"
    title = (
        f"DORA · {scope} · {report.environment} · "
        f"{report.window_start:%Y-%m-%d %H:%M} → {report.window_end:%Y-%m-%d %H:%M} UTC"
    )
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("basis")
    table.add_row(
        "deployment frequency",
        f"{report.deployment_frequency_per_day:.2f} / day",
        f"{report.deployments} successful releases in {report.window_days:.1f} days",
    )
    table.add_row(
        "lead time for changes",
        _duration(report.lead_time_median_seconds),
        f"median; p90 {_duration(report.lead_time_p90_seconds)}",
    )
    cfr = report.change_failure_rate
    table.add_row(
        "change failure rate",
        "—" if cfr is None else f"{cfr:.0%}",
        f"{report.failed_releases} of {report.releases} releases failed or rolled back",
    )
    table.add_row(
        "time to restore",
        _duration(report.time_to_restore_median_seconds),
        f"median of {report.restored_failures} restored; {report.open_failures} still open",
    )
    return table


def dora_command(
    records: Iterable[DeploymentRecord],
    since: timedelta | datetime | str,
    repository: str | None = None,
    as_json: bool = False,
    *,
    now: datetime | None = None,
    console: Console | None = None,
) -> int:
    """``gantry dora``: print the report as a table or JSON; the exit code."""
    console = console or Console()
    try:
        window = parse_since(since) if isinstance(since, str) else since
        report = compute_dora(records, window, now=now, repository=repository)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return 2
    if as_json:
        # Raw text, not rich output: scripts parse it, so no wrapping or colour codes.
        console.file.write(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    else:
        console.print(render_table(report))
    return 0
