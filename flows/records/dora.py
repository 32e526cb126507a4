"""DORA metrics from the history of production releases.

- deployment frequency: successful releases in the window, and per day;
- lead time for changes: first commit (else merge) to the end of the successful release,
  median and 90th percentile;
- change failure rate: failed and rolled-back releases over all releases in the window;
- time to restore: from the end of a failed release (the first of a run of failures) to the end
  of the next successful release of the same repository, median; failures with no successful
  release since are counted as open.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, field_validator

Outcome = Literal["success", "failed", "rolled_back"]
FAILED_OUTCOMES = frozenset({"failed", "rolled_back"})
PRODUCTION = "production"


class ReleaseLike(Protocol):
    """What a recorded release gives DORA (``flows.records.store.ReleaseRecord`` fits)."""

    @property
    def repository_slug(self) -> str: ...
    @property
    def environment(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime: ...
    @property
    def commit_sha(self) -> str: ...
    @property
    def commit_time(self) -> datetime | None: ...
    @property
    def outcome(self) -> str: ...


def deployment_records(releases: Iterable[ReleaseLike]) -> list[DeploymentRecord]:
    """The releases that deployed something; a rejection or a timeout deployed nothing."""
    return [
        DeploymentRecord(
            repository=r.repository_slug,
            environment=r.environment,
            started_at=r.started_at,
            finished_at=r.finished_at,
            commit_sha=r.commit_sha,
            commit_time=r.commit_time,
            outcome=r.outcome,
        )
        for r in releases
        if r.outcome in ("success", *FAILED_OUTCOMES)
    ]


def _utc(moment: datetime) -> datetime:
    # Naive times are taken as UTC, so aware and naive records compare.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class DeploymentRecord(BaseModel):
    """One deployment of one repository to one environment."""

    model_config = ConfigDict(frozen=True)

    repository: str
    environment: str
    started_at: datetime
    finished_at: datetime
    commit_sha: str
    commit_time: datetime | None = None
    merged_at: datetime | None = None
    outcome: Outcome

    @field_validator("started_at", "finished_at", "commit_time", "merged_at")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _utc(value)

    @property
    def change_time(self) -> datetime | None:
        """When the change began: its first commit, else its merge."""
        return self.commit_time or self.merged_at


class DoraReport(BaseModel):
    """DORA metrics for one window. Durations in seconds; None where there is nothing to measure."""

    repository: str | None
    environment: str
    window_start: datetime
    window_end: datetime
    window_days: float
    releases: int
    deployments: int
    failed_releases: int
    deployment_frequency_per_day: float
    lead_time_median_seconds: float | None
    lead_time_p90_seconds: float | None
    change_failure_rate: float | None
    time_to_restore_median_seconds: float | None
    restored_failures: int
    open_failures: int


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def compute_dora(
    records: Iterable[DeploymentRecord],
    since: timedelta | datetime,
    now: datetime | None = None,
    repository: str | None = None,
    environment: str = PRODUCTION,
) -> DoraReport:
    """The DORA report for releases to ``environment`` that finished in ``[since, now]``."""
    end = _utc(now or datetime.now(UTC))
    start = end - since if isinstance(since, timedelta) else _utc(since)
    if start >= end:
        raise ValueError("the window must start before it ends")
    history = sorted(
        (
            r
            for r in records
            if r.environment == environment
            and (repository is None or r.repository == repository)
            and r.finished_at <= end
        ),
        key=lambda r: r.finished_at,
    )
    window = [r for r in history if r.finished_at >= start]
    successes = [r for r in window if r.outcome == "success"]
    failures = [r for r in window if r.outcome in FAILED_OUTCOMES]
    days = (end - start) / timedelta(days=1)

    lead_times = [
        (r.finished_at - r.change_time).total_seconds()
        for r in successes
        if r.change_time is not None
    ]
    restores, still_open = _restore_times(history, start)
    return DoraReport(
        repository=repository,
        environment=environment,
        window_start=start,
        window_end=end,
        window_days=days,
        releases=len(window),
        deployments=len(successes),
        failed_releases=len(failures),
        deployment_frequency_per_day=len(successes) / days,
        lead_time_median_seconds=statistics.median(lead_times) if lead_times else None,
        lead_time_p90_seconds=percentile(lead_times, 0.9) if lead_times else None,
        change_failure_rate=len(failures) / len(window) if window else None,
        time_to_restore_median_seconds=statistics.median(restores) if restores else None,
        restored_failures=len(restores),
        open_failures=still_open,
    )


def _restore_times(history: Sequence[DeploymentRecord], start: datetime) -> tuple[list[float], int]:
    """Seconds from each failure run's first failure to the repository's next success.

    A run of consecutive failures is one outage: counting each failure would restore the
    same outage several times. Only outages that began inside the window count.
    """
    restores: list[float] = []
    open_count = 0
    failing_since: dict[str, datetime] = {}
    for record in history:
        if record.outcome in FAILED_OUTCOMES:
            failing_since.setdefault(record.repository, record.finished_at)
            continue
        began = failing_since.pop(record.repository, None)
        if began is not None and began >= start:
            restores.append((record.finished_at - began).total_seconds())
    open_count = sum(1 for began in failing_since.values() if began >= start)
    return restores, open_count


class GaugeSink(Protocol):
    """What ``emit`` needs (``clients.metrics.Metrics`` fits)."""

    def dora_gauge(self, name: str, value: float, repository: str | None, window: str) -> None: ...


def window_label(report: DoraReport) -> str:
    days = report.window_days
    return f"{days:g}d" if days == int(days) else f"{days * 24:.0f}h"


def emit(metrics: GaugeSink, report: DoraReport) -> None:
    """The report as ``gantry.dora.*`` gauges, tagged by repository (or ``all``) and window."""
    window = window_label(report)
    values: dict[str, float | None] = {
        "deployments": report.deployments,
        "deployment_frequency": report.deployment_frequency_per_day,
        "lead_time.median": report.lead_time_median_seconds,
        "lead_time.p90": report.lead_time_p90_seconds,
        "change_failure_rate": report.change_failure_rate,
        "time_to_restore.median": report.time_to_restore_median_seconds,
        "open_failures": report.open_failures,
    }
    for name, value in values.items():
        if value is not None:  # no data is not zero: a gauge of 0 would read as perfect
            metrics.dora_gauge(name, float(value), report.repository, window)


_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([hdw])\s*$", re.IGNORECASE)


def parse_since(text: str) -> timedelta | datetime:
    """``30d``, ``12h``, ``2w`` or an ISO date/time (UTC when it has no offset)."""
    match = _SINCE.match(text)
    if match:
        amount, unit = float(match[1]), match[2].lower()
        return timedelta(**{{"h": "hours", "d": "days", "w": "weeks"}[unit]: amount})
    try:
        return _utc(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        raise ValueError(f"--since {text!r}: use 30d, 12h, 2w or an ISO date") from exc
