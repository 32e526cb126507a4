"""``gantry.rollbacks``: counted by the announcement of a release that rolled back, and only then.

The real announcement (flows/records/announce.py) sends to a real UDP listener standing in for
the Datadog agent, found the way a worker finds it (``DD_AGENT_HOST``/``DD_DOGSTATSD_PORT``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

from core.ports import free_port
from flows.records.announce import announce_release
from flows.records.store import Outcome, ReleaseRecord
from tests.observability.conftest import StatsdListener
from tests.plugins.prefect_server import prefect_api

REPOSITORY = "acme/api"


def announce(outcome: Outcome) -> None:
    record = ReleaseRecord(
        id=f"release-{uuid.uuid4().hex[:8]}",
        repository_slug=REPOSITORY,
        candidate_id="cand-1",
        commit_sha="a" * 40,
        images={"api": "registry/api@sha256:" + "0" * 64},
        outcome=outcome,
        started_at=datetime.now(UTC),
    )
    asyncio.run(announce_release(record, None))


@pytest.fixture
def agent(statsd: StatsdListener, monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdListener]:
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("DD_DOGSTATSD_PORT", str(statsd.port))
    # The Prefect API at a closed loopback port: the Datadog block, the DORA history and the
    # failure event each fail and are logged, as when the server is down; the metrics do not
    # depend on it. No client retries, so that each failure comes sooner.
    with prefect_api(f"http://127.0.0.1:{free_port()}/api", {PREFECT_CLIENT_MAX_RETRIES: 0}):
        yield statsd


def test_a_rolled_back_release_counts_one_rollback_and_a_successful_one_none(
    agent: StatsdListener,
) -> None:
    announce("rolled_back")
    [line] = agent.receive_lines(1, prefix="gantry.rollbacks:")
    assert line == f"gantry.rollbacks:1|c|#environment:production,repository:{REPOSITORY}"
    announce("success")
    # Sent during the call: by now every line of the success is waiting in the socket.
    lines = drain(agent)
    assert any(line.startswith("gantry.release.outcome:") for line in lines), lines
    assert [line for line in lines if line.startswith("gantry.rollbacks:")] == []


def drain(agent: StatsdListener) -> list[str]:
    lines: list[str] = []
    agent.sock.settimeout(0.5)
    while True:
        try:
            payload = agent.sock.recv(65535)
        except TimeoutError:
            return lines
        lines += [line for line in payload.decode().split("\n") if line]
