"""PagerDuty Events API v2 against a real local server answering like PagerDuty."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from blocks.observability import PagerDutySettings
from clients.pagerduty import (
    DEDUP_KEY_LIMIT,
    PagerDuty,
    PagerDutyInvalidEvent,
    PagerDutyRateLimited,
    PagerDutyUnavailable,
    RetryPolicy,
    dedup_key,
    page,
    resolve_page,
    severity_for,
)
from tests.fakes.pagerduty_api import ROUTING_KEY, FakePagerDuty

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_wait=2.0)
KEY = dedup_key("release", "acme/api", "production")


def client_for(fake: FakePagerDuty, key: str = ROUTING_KEY) -> PagerDuty:
    return PagerDuty(SecretStr(key), fake.events_url, policy=FAST, timeout=5)


def settings_for(fake: FakePagerDuty) -> PagerDutySettings:
    return PagerDutySettings(routing_key=SecretStr(ROUTING_KEY), events_url=fake.events_url)


@pytest.mark.parametrize(
    ("priority", "severity"),
    [("P1", "critical"), ("P2", "error"), ("P3", "warning"), ("p1", "critical"), ("info", "info")],
)
def test_priorities_map_to_pagerduty_severities(priority: str, severity: str) -> None:
    assert severity_for(priority) == severity


def test_an_unknown_priority_is_refused() -> None:
    with pytest.raises(ValueError, match="P1, P2, P3"):
        severity_for("P9")


def test_dedup_keys_are_stable_and_fit_pagerdutys_limit() -> None:
    assert KEY == "gantry/release/acme/api/production"
    long_key = dedup_key("release", "x" * 400)
    assert len(long_key) == DEDUP_KEY_LIMIT
    assert long_key == dedup_key("release", "x" * 400)
    assert long_key != dedup_key("release", "x" * 401)


async def test_trigger_sends_the_documented_event(pagerduty_api: FakePagerDuty) -> None:
    async with client_for(pagerduty_api) as client:
        kept = await client.trigger(
            "Production rollout of acme/api failed and was rolled back",
            source="gantry",
            dedup_key=KEY,
            severity="P1",
            component="acme/api",
            group="production",
            custom_details={"sha": "3f78685"},
            links=[{"href": "http://127.0.0.1:4200/runs/flow-run/1", "text": "Flow run"}],
        )
    assert kept == KEY
    assert pagerduty_api.alerts == {KEY: "triggered"}
    [request] = pagerduty_api.requests
    body = request.json
    assert body["routing_key"] == ROUTING_KEY
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == KEY
    assert body["payload"]["severity"] == "critical"
    assert body["payload"]["source"] == "gantry"
    assert body["payload"]["component"] == "acme/api"
    assert body["payload"]["custom_details"] == {"sha": "3f78685"}
    assert body["links"][0]["text"] == "Flow run"
    assert "authorization" not in request.headers


async def test_acknowledge_and_resolve_use_the_dedup_key(pagerduty_api: FakePagerDuty) -> None:
    async with client_for(pagerduty_api) as client:
        await client.trigger("down", source="gantry", dedup_key=KEY, severity="P3")
        await client.acknowledge(KEY)
        assert pagerduty_api.alerts[KEY] == "acknowledged"
        await client.resolve(KEY)
    assert pagerduty_api.alerts[KEY] == "resolved"
    assert [r.json["event_action"] for r in pagerduty_api.requests] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert "payload" not in pagerduty_api.requests[-1].json


async def test_a_long_summary_is_cut_to_the_limit(pagerduty_api: FakePagerDuty) -> None:
    async with client_for(pagerduty_api) as client:
        await client.trigger("s" * 2000, source="gantry", dedup_key=KEY)
    assert len(pagerduty_api.requests[0].json["payload"]["summary"]) == 1024


async def test_an_invalid_event_is_not_retried_and_names_the_problem(
    pagerduty_api: FakePagerDuty,
) -> None:
    wrong = "W" * 32
    async with client_for(pagerduty_api, key=wrong) as client:
        with pytest.raises(PagerDutyInvalidEvent, match="routing_key") as caught:
            await client.trigger("down", source="gantry", dedup_key=KEY)
    assert caught.value.status == 400
    assert wrong not in str(caught.value)
    assert len(pagerduty_api.requests) == 1


async def test_throttling_and_server_errors_are_retried(pagerduty_api: FakePagerDuty) -> None:
    pagerduty_api.fail_next(429)
    pagerduty_api.fail_next(502)
    async with client_for(pagerduty_api) as client:
        await client.resolve(KEY)
    assert len(pagerduty_api.requests) == 3
    assert pagerduty_api.alerts[KEY] == "resolved"


async def test_retries_are_bounded(pagerduty_api: FakePagerDuty) -> None:
    pagerduty_api.fail_next(500, times=5)
    async with client_for(pagerduty_api) as client:
        with pytest.raises(PagerDutyUnavailable, match="after 3 attempts"):
            await client.resolve(KEY)
    assert len(pagerduty_api.requests) == 3


async def test_lasting_throttling_is_its_own_error(pagerduty_api: FakePagerDuty) -> None:
    pagerduty_api.fail_next(429, times=5)
    async with client_for(pagerduty_api) as client:
        with pytest.raises(PagerDutyRateLimited):
            await client.acknowledge(KEY)


async def test_page_and_resolve_page_report_success(pagerduty_api: FakePagerDuty) -> None:
    settings = settings_for(pagerduty_api)
    assert await page(settings, "down", source="gantry", dedup_key=KEY, severity="P2", policy=FAST)
    assert pagerduty_api.alerts[KEY] == "triggered"
    assert await resolve_page(settings, KEY, policy=FAST)
    assert pagerduty_api.alerts[KEY] == "resolved"


async def test_page_never_raises_and_logs_without_the_key(
    pagerduty_api: FakePagerDuty, caplog: pytest.LogCaptureFixture
) -> None:
    pagerduty_api.fail_next(500, times=5)
    with caplog.at_level(logging.WARNING, logger="gantry.pagerduty"):
        ok = await page(
            settings_for(pagerduty_api), "down", source="gantry", dedup_key=KEY, policy=FAST
        )
        bad_priority = await page(
            settings_for(pagerduty_api), "down", source="gantry", dedup_key=KEY, severity="P7"
        )
    assert not ok and not bad_priority
    assert "HTTP 500" in caplog.text
    assert ROUTING_KEY not in caplog.text


async def test_without_settings_nothing_is_paged(pagerduty_api: FakePagerDuty) -> None:
    assert not await page(None, "down", source="gantry", dedup_key=KEY)
    assert not await resolve_page(None, KEY)
    assert pagerduty_api.requests == []
