"""The figures a user waits on, each beside its goal (issue: fast triggers).

Each goal is checked against the figure measured in the same run; the report says met or
missed and never hides a figure that could not be measured.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rich.table import Table


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (``fraction`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Goal:
    figure: str
    measured: str
    goal: str
    met: bool | None  # None: not measured in this run


def _seconds(value: float) -> str:
    return f"{value:.2f} s"


def goals(results: dict[str, Any]) -> list[Goal]:
    """Every goal of the fast-triggers issue, from one bench run's results."""
    rows: list[Goal] = []
    first = results.get("webhook_to_first_step") or {}
    samples: list[float] = list(first.get("samples") or [])
    if samples and not first.get("missing"):
        median, p90 = statistics.median(samples), percentile(samples, 0.9)
        rows.append(
            Goal(
                f"signed pull_request delivery → first step running (n={len(samples)})",
                f"median {_seconds(median)}, p90 {_seconds(p90)}",
                "median ≤ 1.5 s, p90 ≤ 2.5 s",
                median <= 1.5 and p90 <= 2.5,
            )
        )
    else:
        missing = first.get("missing", "?")
        rows.append(
            Goal("delivery → first step running", f"{missing} run(s) never started", "", None)
        )
    rerun = results.get("cli_rerun")
    if rerun:
        rows.append(
            Goal(
                "`gantry run pr` re-run of an unchanged commit, end to end",
                f"{_seconds(rerun['cached'])} (first run {_seconds(rerun['first'])})",
                "≤ 3 s",
                rerun["cached"] <= 3.0,
            )
        )
    sample = results.get("sample_pr")
    if sample:
        longest = max(sample["tasks"].values())
        bound = 1.25 * longest + 2.0
        total = sample["trigger_to_final"]
        rows.append(
            Goal(
                "sample service PR pipeline, trigger → verdict",
                f"{_seconds(total)} (longest step {_seconds(longest)})",
                f"≤ 1.25 x longest + 2 s = {_seconds(bound)}",
                total <= bound,
            )
        )
    load = results.get("receiver_load")
    if load:
        rows.append(
            Goal(
                f"receiver, {load['sent']} signed deliveries at {load['rate']:.0f}/s",
                f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
                f"max {load['max_ms']:.0f} ms, lost {load['lost']}",
                "p99 ≤ 20 ms, none lost",
                load["p99_ms"] <= 20.0 and load["lost"] == 0,
            )
        )
    helps = results.get("cli_help")
    if helps:
        median = statistics.median(helps)
        rows.append(
            Goal(
                f"`gantry --help` (median of {len(helps)})",
                _seconds(median),
                "≤ 0.3 s",
                median <= 0.3,
            )
        )
    return rows


def goals_table(results: dict[str, Any]) -> Table:
    table = Table("figure", "measured", "goal", "met", title="What the user waits for")
    for row in goals(results):
        verdict = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[row.met]
        table.add_row(row.figure, row.measured, row.goal, verdict)
    return table
