"""Queue time: from the webhook's arrival (or the run's creation) to the flow running."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prefect import flow

from clients.metrics import ENV_HOST, ENV_PORT
from deployments.prefect_server import PrefectServer
from flows.pipelines.observers import queue_time_hook
from tests.observability.conftest import StatsdListener


@flow(name="queue-time-probe", on_running=[queue_time_hook("pr")])
async def probe(repository: str, received_at: datetime | None = None) -> str:
    del received_at
    return repository


@pytest.fixture
def agent(statsd: StatsdListener, monkeypatch: pytest.MonkeyPatch) -> StatsdListener:
    monkeypatch.setenv(ENV_HOST, "127.0.0.1")
    monkeypatch.setenv(ENV_PORT, str(statsd.port))
    return statsd


def queue_times(listener: StatsdListener) -> list[tuple[float, tuple[str, ...]]]:
    got = listener.receive(1, timeout=10)
    return [(float(d.value), d.tags) for d in got if d.name == "gantry.pipeline.queue_time"]


def test_queue_time_runs_from_the_webhooks_arrival(
    prefect_server: PrefectServer, agent: StatsdListener
) -> None:
    del prefect_server
    received = datetime.now(UTC) - timedelta(seconds=30)
    assert asyncio.run(probe("/srv/git/tasks-api.git", received)) == "/srv/git/tasks-api.git"
    [(seconds, tags)] = queue_times(agent)
    # Thirty seconds ago plus however long the run took to start, so at least thirty and at
    # most the time since the delivery's arrival (it cannot include what came after).
    assert 30 <= seconds <= (datetime.now(UTC) - received).total_seconds()
    assert tags == ("pipeline:pr", "repository:tasks-api")


def test_without_a_webhook_queue_time_runs_from_the_runs_creation(
    prefect_server: PrefectServer, agent: StatsdListener
) -> None:
    del prefect_server
    before = datetime.now(UTC)
    asyncio.run(probe("/srv/git/tasks-api.git"))
    [(seconds, tags)] = queue_times(agent)
    # Measured from the run's creation, which came after `before`.
    assert 0 <= seconds <= (datetime.now(UTC) - before).total_seconds()
    assert tags == ("pipeline:pr", "repository:tasks-api")


def test_a_naive_arrival_time_is_read_as_utc(
    prefect_server: PrefectServer, agent: StatsdListener
) -> None:
    del prefect_server
    received = datetime.now(UTC) - timedelta(days=2)
    asyncio.run(probe("/srv/git/tasks-api.git", received.replace(tzinfo=None)))
    [(seconds, _)] = queue_times(agent)
    # A naive time is read as UTC, not local time: two days, not two days plus an offset.
    assert 2 * 86400 <= seconds <= (datetime.now(UTC) - received).total_seconds()
