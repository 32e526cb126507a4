"""Datadog events and DORA records against a real local server answering like Datadog."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from blocks.observability import DatadogSettings
from clients.datadog_api import (
    DatadogAPI,
    DatadogAuthError,
    DatadogRateLimited,
    DatadogRequestError,
    DatadogUnavailable,
    RetryPolicy,
    epoch_ns,
    report_deployment,
)
from tests.fakes.datadog_api import API_KEY, FakeDatadog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_wait=2.0)
STARTED = datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
FINISHED = STARTED + timedelta(minutes=4)
SHA = "3f786850e387550fdab836ed7e6dc881de23001b"


def api_for(fake: FakeDatadog, key: str = API_KEY) -> DatadogAPI:
    return DatadogAPI(SecretStr(key), fake.url, policy=FAST, timeout=5)


def settings_for(fake: FakeDatadog, key: str | None = API_KEY) -> DatadogSettings:
    return DatadogSettings(
        api_key=SecretStr(key) if key else None, api_url=fake.url, tags=["team:platform"]
    )


def test_times_are_exact_epoch_nanoseconds() -> None:
    assert epoch_ns(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005_000
    assert epoch_ns(STARTED) == 1717243200_123456000
    assert epoch_ns(STARTED.replace(tzinfo=None)) == epoch_ns(STARTED)


async def test_event_is_posted_with_the_api_key_header_and_documented_body(
    datadog_api: FakeDatadog,
) -> None:
    async with api_for(datadog_api) as api:
        event = await api.post_event(
            "api deployed to production",
            "Commit: abc",
            tags=["env:production"],
            alert_type="success",
            date_happened=FINISHED,
        )
    assert event["title"] == "api deployed to production"
    [request] = datadog_api.requests
    assert request.path == "/api/v1/events"
    assert request.headers["dd-api-key"] == API_KEY
    assert request.json["text"] == "Commit: abc"
    assert request.json["tags"] == ["env:production"]
    assert request.json["alert_type"] == "success"
    assert request.json["date_happened"] == int(FINISHED.timestamp())


async def test_event_text_is_cut_to_datadogs_limit(datadog_api: FakeDatadog) -> None:
    async with api_for(datadog_api) as api:
        await api.post_event("long", "x" * 5000)
    assert len(datadog_api.events[0]["text"]) == 4000


async def test_dora_deployment_sends_nanosecond_times_and_git_details(
    datadog_api: FakeDatadog,
) -> None:
    async with api_for(datadog_api) as api:
        deployment_id = await api.dora_deployment(
            service="api",
            started_at=STARTED,
            finished_at=FINISHED,
            commit_sha=SHA,
            repository_url="https://github.com/acme/api",
            env="production",
            version="1.4.0",
            team="platform",
            custom_tags=["outcome:success"],
        )
    assert deployment_id.startswith("dep-")
    assert datadog_api.deployments == [
        {
            "service": "api",
            "started_at": epoch_ns(STARTED),
            "finished_at": epoch_ns(FINISHED),
            "git": {"commit_sha": SHA, "repository_url": "https://github.com/acme/api"},
            "env": "production",
            "version": "1.4.0",
            "team": "platform",
            "custom_tags": ["outcome:success"],
        }
    ]


async def test_dora_failure_names_its_services(datadog_api: FakeDatadog) -> None:
    async with api_for(datadog_api) as api:
        failure_id = await api.dora_failure(
            services=["api"], started_at=FINISHED, name="api rolled back", env="production"
        )
    assert failure_id.startswith("fail-")
    assert datadog_api.failures == [
        {
            "services": ["api"],
            "started_at": epoch_ns(FINISHED),
            "name": "api rolled back",
            "env": "production",
        }
    ]


async def test_wrong_key_is_an_auth_error_without_retries_and_without_the_key(
    datadog_api: FakeDatadog,
) -> None:
    wrong = "ffffffffffffffffffffffffffffffff"
    async with api_for(datadog_api, key=wrong) as api:
        with pytest.raises(DatadogAuthError) as caught:
            await api.post_event("t", "x")
    assert caught.value.status == 403
    assert "Forbidden" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in repr(caught.value)
    assert len(datadog_api.requests) == 1


async def test_rejected_body_is_a_request_error_with_datadogs_detail(
    datadog_api: FakeDatadog,
) -> None:
    async with api_for(datadog_api) as api:
        with pytest.raises(DatadogRequestError, match="finished_at must not be before"):
            await api.dora_deployment(service="api", started_at=FINISHED, finished_at=STARTED)
    assert len(datadog_api.requests) == 1


async def test_rate_limit_and_server_errors_are_retried_then_succeed(
    datadog_api: FakeDatadog,
) -> None:
    datadog_api.fail_next(429)
    datadog_api.fail_next(503)
    async with api_for(datadog_api) as api:
        await api.dora_deployment(service="api", started_at=STARTED, finished_at=FINISHED)
    assert len(datadog_api.requests) == 3
    assert len(datadog_api.deployments) == 1


async def test_retries_are_bounded(datadog_api: FakeDatadog) -> None:
    datadog_api.fail_next(500, times=5)
    async with api_for(datadog_api) as api:
        with pytest.raises(DatadogUnavailable, match="after 3 attempts") as caught:
            await api.post_event("t", "x")
    assert caught.value.status == 500
    assert len(datadog_api.requests) == 3


async def test_a_lasting_rate_limit_is_its_own_error(datadog_api: FakeDatadog) -> None:
    datadog_api.fail_next(429, times=5)
    async with api_for(datadog_api) as api:
        with pytest.raises(DatadogRateLimited):
            await api.post_event("t", "x")


async def test_a_rate_limit_reset_beyond_the_budget_stops_at_once(
    datadog_api: FakeDatadog,
) -> None:
    datadog_api.fail_next(429, headers={"X-RateLimit-Reset": "3600"})
    async with api_for(datadog_api) as api:
        with pytest.raises(DatadogRateLimited):
            await api.post_event("t", "x")
    assert len(datadog_api.requests) == 1


async def test_an_unreachable_site_is_unavailable_after_retries() -> None:
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    probe.close()
    async with DatadogAPI(SecretStr(API_KEY), url, policy=FAST, timeout=2) as api:
        with pytest.raises(DatadogUnavailable, match="ConnectError"):
            await api.post_event("t", "x")


async def test_report_deployment_sends_an_event_and_a_dora_deployment(
    datadog_api: FakeDatadog,
) -> None:
    ok = await report_deployment(
        settings_for(datadog_api),
        service="api",
        repository="acme/api",
        environment="production",
        outcome="success",
        started_at=STARTED,
        finished_at=FINISHED,
        commit_sha=SHA,
        version="1.4.0",
        run_url="http://127.0.0.1:4200/runs/flow-run/1",
        policy=FAST,
    )
    assert ok
    [event] = datadog_api.events
    assert event["alert_type"] == "success"
    assert "repository:acme/api" in event["tags"] and "team:platform" in event["tags"]
    assert "http://127.0.0.1:4200/runs/flow-run/1" in event["text"]
    [deployment] = datadog_api.deployments
    assert deployment["git"] == {"commit_sha": SHA, "repository_url": "https://github.com/acme/api"}
    assert deployment["env"] == "production"
    assert datadog_api.failures == []


async def test_report_of_a_rollback_also_records_a_dora_failure(datadog_api: FakeDatadog) -> None:
    ok = await report_deployment(
        settings_for(datadog_api),
        service="api",
        repository="acme/api",
        environment="production",
        outcome="rolled_back",
        started_at=STARTED,
        finished_at=FINISHED,
        commit_sha=SHA,
        policy=FAST,
    )
    assert ok
    assert datadog_api.events[0]["alert_type"] == "warning"
    [failure] = datadog_api.failures
    assert failure["services"] == ["api"]
    assert failure["started_at"] == epoch_ns(FINISHED)


async def test_report_without_an_api_key_sends_nothing(datadog_api: FakeDatadog) -> None:
    ok = await report_deployment(
        settings_for(datadog_api, key=None),
        service="api",
        repository="acme/api",
        environment="production",
        outcome="success",
        started_at=STARTED,
        finished_at=FINISHED,
        commit_sha=SHA,
    )
    assert not ok
    assert datadog_api.requests == []


@pytest.mark.parametrize("status", [400, 403, 500])
async def test_report_never_raises_and_logs_without_the_key(
    datadog_api: FakeDatadog, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    datadog_api.fail_next(status, times=5)
    with caplog.at_level(logging.WARNING, logger="gantry.datadog"):
        ok = await report_deployment(
            settings_for(datadog_api),
            service="api",
            repository="acme/api",
            environment="production",
            outcome="failed",
            started_at=STARTED,
            finished_at=FINISHED,
            commit_sha=SHA,
            policy=FAST,
        )
    assert not ok
    assert any(f"HTTP {status}" in r.getMessage() for r in caplog.records)
    assert API_KEY not in caplog.text
