"""The shared retry bounds: jittered backoff, the per-call budget, Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from clients import datadog_api, github, github_http, pagerduty, snyk
from clients.retry import Retries, RetryPolicy, retry_after_seconds

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
SAMPLES = 2000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def answer(**headers: str) -> httpx.Response:
    return httpx.Response(429, headers=headers)


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)])
def test_delay_doubles_with_equal_jitter_between_half_the_ceiling_and_the_ceiling(
    attempt: int, ceiling: float
) -> None:
    policy = RetryPolicy(backoff=0.5, backoff_cap=8.0)
    delays = [policy.delay(attempt) for _ in range(SAMPLES)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    # Jittered: spread over the range, not one value for every caller.
    assert len(set(delays)) > SAMPLES // 2
    assert min(delays) < ceiling * 0.6
    assert max(delays) > ceiling * 0.9


def test_delay_is_capped() -> None:
    policy = RetryPolicy(backoff=1.0, backoff_cap=3.0)
    for attempt in (3, 4, 10, 60):
        delays = [policy.delay(attempt) for _ in range(SAMPLES)]
        assert all(1.5 <= d <= 3.0 for d in delays)


def test_failed_tries_stop_at_the_attempts() -> None:
    retries = Retries(RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_wait=10.0))
    assert retries.failed() is not None
    assert retries.failed() is not None
    assert retries.failed() is None  # the third failure was the last try
    assert retries.failures == 3


@pytest.mark.anyio
async def test_failed_tries_stop_when_the_next_sleep_would_exceed_the_wait_budget() -> None:
    retries = Retries(RetryPolicy(attempts=10, backoff=0.02, backoff_cap=0.02, max_wait=0.05))
    first = retries.failed()
    assert first is not None and 0.01 <= first <= 0.02
    await retries.sleep(first)
    await retries.sleep(0.03)
    assert retries.waited == pytest.approx(first + 0.03)
    assert retries.failed() is None


def test_a_floor_lengthens_the_delay_and_counts_against_the_budget() -> None:
    retries = Retries(RetryPolicy(attempts=5, backoff=0.01, backoff_cap=0.01, max_wait=3.0))
    assert retries.failed(at_least=2.0) == 2.0
    assert retries.failed(at_least=4.0) is None


def test_rate_limit_waits_are_counted_apart_and_bounded() -> None:
    retries = Retries(RetryPolicy(attempts=2, max_wait=10.0))
    assert retries.may_wait(0.0)
    assert retries.may_wait(5.0)
    assert not retries.may_wait(0.0)  # a limiter answering "retry-after: 0" forever
    assert (retries.limited, retries.failures) == (3, 0)
    assert not Retries(RetryPolicy(max_wait=10.0)).may_wait(10.5)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("7", 7.0), (" 2.5 ", 2.5), ("-3", 0.0), ("120", 120.0)],
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert retry_after_seconds(answer(**{"Retry-After": value})) == seconds


def test_retry_after_as_an_http_date() -> None:
    later = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    assert later.endswith("GMT")
    assert retry_after_seconds(answer(**{"retry-after": later}), now=NOW) == pytest.approx(90.0)
    earlier = format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True)
    assert retry_after_seconds(answer(**{"retry-after": earlier}), now=NOW) == 0.0
    unknown_zone = answer(**{"retry-after": "Sat, 01 Mar 2025 12:00:30 -0000"})  # taken as UTC
    assert retry_after_seconds(unknown_zone, now=NOW) == pytest.approx(30.0)


@pytest.mark.parametrize("value", ["", "soon", "nan", "12s", "Sat, 32 Foo 2025 99:00:00 GMT"])
def test_unreadable_retry_after_is_none(value: str) -> None:
    assert retry_after_seconds(answer(**{"retry-after": value})) is None


def test_no_retry_after_is_none() -> None:
    assert retry_after_seconds(answer()) is None


def test_each_client_keeps_its_own_defaults() -> None:
    def bounds(policy: RetryPolicy) -> tuple[int, float, float, float]:
        return (policy.attempts, policy.backoff, policy.backoff_cap, policy.max_wait)

    assert bounds(datadog_api.RetryPolicy()) == (4, 0.5, 8.0, 30.0)
    assert bounds(pagerduty.RetryPolicy()) == (5, 1.0, 16.0, 60.0)
    assert bounds(snyk.RetryPolicy()) == (4, 1.0, 30.0, 120.0)
    assert snyk.RetryPolicy().max_retry_after == 60.0
    assert github.RetryPolicy is github_http.RetryPolicy
    assert bounds(github.RetryPolicy()) == (4, 0.5, 10.0, 300.0)
    assert (github.RetryPolicy().secondary_min_wait, github.RetryPolicy().reset_slack) == (60, 1)
    assert all(
        issubclass(p, RetryPolicy)
        for p in (datadog_api.RetryPolicy, pagerduty.RetryPolicy, snyk.RetryPolicy)
    )
