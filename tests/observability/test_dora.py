"""DORA metrics over a hand-built release history whose answers were worked out by hand."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from clients.metrics import Metrics
from deployments.dora import dora_command, render_table
from flows.records.dora import DeploymentRecord, compute_dora, emit, parse_since, percentile
from tests.observability.conftest import StatsdListener

NOW = datetime(2024, 6, 30, tzinfo=UTC)
HOUR = 3600.0


def at(day: int, hour: int = 0, minute: int = 0, month: int = 6) -> datetime:
    return datetime(2024, month, day, hour, minute, tzinfo=UTC)


def release(
    repository: str,
    finished: datetime,
    outcome: str,
    *,
    commit: datetime | None = None,
    merged: datetime | None = None,
    environment: str = "production",
) -> DeploymentRecord:
    return DeploymentRecord(
        repository=repository,
        environment=environment,
        started_at=finished - timedelta(minutes=10),
        finished_at=finished,
        commit_sha=f"{abs(hash((repository, finished))):040x}"[:40],
        commit_time=commit,
        merged_at=merged,
        outcome=outcome,
    )


API, WEB = "acme/api", "acme/web"
HISTORY = [
    release(API, at(20, month=5), "success", commit=at(19, month=5)),  # before the window
    release(API, at(1, 10), "success", commit=at(1, 8)),  # lead 2 h
    release(API, at(5, 12), "failed", commit=at(5, 10)),
    release(API, at(5, 15), "success", commit=at(4, 15)),  # lead 24 h; restores 3 h
    release(API, at(10), "rolled_back"),
    release(API, at(10, 6), "failed"),  # same outage as the rollback before it
    release(API, at(11), "success", merged=at(10, 20)),  # lead 4 h from merge; restores 24 h
    release(API, at(20), "success"),  # no commit or merge time: no lead time
    release(API, at(29), "failed"),  # not restored yet
    release(API, at(2), "success", commit=at(1), environment="staging"),  # not production
    release(API, at(1, month=7), "success", commit=at(30)),  # after now
    release(WEB, at(15), "success", commit=at(14, 23)),  # lead 1 h
    release(WEB, at(16), "failed"),
    release(WEB, at(16, 0, 30), "success", commit=at(15, 12, 30)),  # lead 12 h; restores 30 min
]


def test_all_repositories_over_thirty_days() -> None:
    report = compute_dora(HISTORY, timedelta(days=30), now=NOW)
    assert report.window_start == at(31, month=5)
    assert report.window_days == 30
    assert report.releases == 11
    assert report.deployments == 6
    assert report.deployment_frequency_per_day == pytest.approx(0.2)
    # Lead times 1 h, 2 h, 4 h, 12 h, 24 h: median 4 h; p90 at rank 3.6 = 12 h + 0.6 * 12 h.
    assert report.lead_time_median_seconds == 4 * HOUR
    assert report.lead_time_p90_seconds == pytest.approx(19.2 * HOUR)
    assert report.failed_releases == 5
    assert report.change_failure_rate == pytest.approx(5 / 11)
    # Restores 30 min, 3 h, 24 h (the rollback and the failure after it are one outage).
    assert report.time_to_restore_median_seconds == 3 * HOUR
    assert report.restored_failures == 3
    assert report.open_failures == 1


def test_one_repository() -> None:
    report = compute_dora(HISTORY, timedelta(days=30), now=NOW, repository=API)
    assert report.repository == API
    assert report.releases == 8
    assert report.deployments == 4
    assert report.deployment_frequency_per_day == pytest.approx(4 / 30)
    # Lead times 2 h, 4 h, 24 h: median 4 h; p90 at rank 1.8 = 4 h + 0.8 * 20 h.
    assert report.lead_time_median_seconds == 4 * HOUR
    assert report.lead_time_p90_seconds == pytest.approx(20 * HOUR)
    assert report.change_failure_rate == pytest.approx(0.5)
    assert report.time_to_restore_median_seconds == pytest.approx(13.5 * HOUR)
    assert report.open_failures == 1


def test_a_window_given_as_a_start_time() -> None:
    report = compute_dora(HISTORY, at(16), now=NOW, repository=WEB)
    assert report.window_days == 14
    assert report.releases == 2
    assert report.deployments == 1
    assert report.lead_time_median_seconds == 12 * HOUR
    assert report.time_to_restore_median_seconds == 0.5 * HOUR


def test_empty_history_has_no_rates_rather_than_zero_rates() -> None:
    report = compute_dora([], timedelta(days=7), now=NOW)
    assert report.releases == 0
    assert report.deployments == 0
    assert report.deployment_frequency_per_day == 0.0
    assert report.lead_time_median_seconds is None
    assert report.lead_time_p90_seconds is None
    assert report.change_failure_rate is None
    assert report.time_to_restore_median_seconds is None
    assert report.open_failures == 0


def test_a_failure_without_recovery_is_open_not_restored() -> None:
    report = compute_dora([release(API, at(29), "rolled_back")], timedelta(days=7), now=NOW)
    assert report.change_failure_rate == 1.0
    assert report.time_to_restore_median_seconds is None
    assert report.restored_failures == 0
    assert report.open_failures == 1


def test_naive_times_are_read_as_utc() -> None:
    naive = release(API, datetime(2024, 6, 29, 12), "success", commit=datetime(2024, 6, 29, 11))
    report = compute_dora([naive], timedelta(days=1), now=NOW)
    assert report.lead_time_median_seconds == HOUR


def test_a_window_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="start before"):
        compute_dora(HISTORY, at(1, month=7), now=NOW)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([10.0], 0.9) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0, 5.0], 0.9) == pytest.approx(4.6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("2024-06-01", datetime(2024, 6, 1, tzinfo=UTC)),
        ("2024-06-01T12:00:00+02:00", datetime(2024, 6, 1, 10, tzinfo=UTC)),
    ],
)
def test_since_accepts_durations_and_dates(text: str, expected: object) -> None:
    assert parse_since(text) == expected


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=140, color_system=None), out


def test_command_prints_the_report_as_json() -> None:
    console, out = _console()
    code = dora_command(HISTORY, "30d", API, True, now=NOW, console=console)
    assert code == 0
    data = json.loads(out.getvalue())
    assert data["repository"] == API
    assert data["deployments"] == 4
    assert data["change_failure_rate"] == 0.5
    assert data["window_end"] == "2024-06-30T00:00:00Z"


def test_command_prints_a_table() -> None:
    console, out = _console()
    assert dora_command(HISTORY, timedelta(days=30), None, False, now=NOW, console=console) == 0
    text = out.getvalue()
    for label in ("deployment frequency", "lead time", "change failure rate", "time to restore"):
        assert label in text
    assert "0.20 / day" in text
    assert "45%" in text  # 5 of 11
    assert "1 still open" in text


def test_command_rejects_a_bad_window_with_exit_code_two() -> None:
    console, out = _console()
    assert dora_command(HISTORY, "yesterday", None, False, now=NOW, console=console) == 2
    assert "--since" in out.getvalue()


def test_table_shows_dashes_where_there_is_nothing_to_measure() -> None:
    console, out = _console()
    console.print(render_table(compute_dora([], timedelta(days=7), now=NOW)))
    assert "—" in out.getvalue()


def test_emit_sends_dora_gauges_and_skips_unmeasured_ones(statsd: StatsdListener) -> None:
    metrics = Metrics("127.0.0.1", statsd.port)
    emit(metrics, compute_dora(HISTORY, timedelta(days=30), now=NOW, repository=API))
    got = {d.name: d for d in statsd.receive(7)}
    assert got["gantry.dora.change_failure_rate"].value == "0.5"
    assert got["gantry.dora.change_failure_rate"].type == "g"
    assert got["gantry.dora.change_failure_rate"].tags == ("repository:acme/api", "window:30d")
    assert got["gantry.dora.lead_time.median"].value == "14400.0"
    assert got["gantry.dora.time_to_restore.median"].value == "48600.0"
    assert got["gantry.dora.deployments"].value == "4.0"

    emit(metrics, compute_dora([], timedelta(days=7), now=NOW))
    empty = statsd.receive(3)
    assert {d.name for d in empty} == {
        "gantry.dora.deployments",
        "gantry.dora.deployment_frequency",
        "gantry.dora.open_failures",
    }
    assert statsd.nothing_within(0.2)
