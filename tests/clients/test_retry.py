"""The shared retry bounds: jittered backoff, the per-call budget, Retry-After parsing, and
the generic ``retry_call`` / ``aretry_call`` helpers."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from clients import datadog_api, github, github_http, snyk
from clients.retry import (
    Retries,
    RetryPolicy,
    aretry_call,
    retry_after_seconds,
    retry_call,
)

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
    assert bounds(snyk.RetryPolicy()) == (4, 1.0, 30.0, 120.0)
    assert snyk.RetryPolicy().max_retry_after == 60.0
    assert github.RetryPolicy is github_http.RetryPolicy
    assert bounds(github.RetryPolicy()) == (4, 0.5, 10.0, 300.0)
    assert (github.RetryPolicy().secondary_min_wait, github.RetryPolicy().reset_slack) == (60, 1)
    assert all(issubclass(p, RetryPolicy) for p in (datadog_api.RetryPolicy, snyk.RetryPolicy))


QUICK = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_wait=1.0)
LOGGER = "tests.retry"


class Flaky(Exception):
    """The error a test marks transient."""


class Broken(Exception):
    """The error a test does not."""


class FailsThenAnswers:
    """A call that raises ``errors`` in turn, then answers "ok"; it counts its tries."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.tries = 0

    def __call__(self) -> str:
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def acall(self) -> str:
        await asyncio.sleep(0)
        return self()


def is_flaky(exc: Exception) -> bool:
    return isinstance(exc, Flaky)


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_retry_call_retries_transient_failures_and_returns_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = FailsThenAnswers(Flaky("blip 1"), Flaky("blip 2"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        answer = retry_call(
            call, transient=is_flaky, policy=QUICK, what="fetch x", logger=logging.getLogger(LOGGER)
        )
    assert answer == "ok"
    assert call.tries == 3
    lines = retry_lines(caplog)
    assert len(lines) == 2  # one line per retry
    assert lines[0].startswith("fetch x failed (try 1 of 3): blip 1; retrying in ")
    assert lines[1].startswith("fetch x failed (try 2 of 3): blip 2; retrying in ")


def test_retry_call_gives_up_after_the_attempts_with_the_last_error() -> None:
    call = FailsThenAnswers(*(Flaky(f"blip {n}") for n in range(1, 10)))
    with pytest.raises(Flaky, match="blip 3"):
        retry_call(call, transient=is_flaky, policy=QUICK)
    assert call.tries == QUICK.attempts


def test_retry_call_does_not_retry_what_is_not_transient() -> None:
    call = FailsThenAnswers(Broken("no"))
    with pytest.raises(Broken):
        retry_call(call, transient=is_flaky, policy=QUICK)
    assert call.tries == 1


def test_retry_call_stops_when_the_wait_budget_is_spent() -> None:
    policy = RetryPolicy(attempts=50, backoff=0.02, backoff_cap=0.02, max_wait=0.05)
    call = FailsThenAnswers(*(Flaky("blip") for _ in range(50)))
    with pytest.raises(Flaky):
        retry_call(call, transient=is_flaky, policy=policy)
    # Sleeps of 0.01-0.02 s each within 0.05 s: at most five sleeps, so at most six tries.
    assert 3 <= call.tries <= 6


@pytest.mark.anyio
async def test_aretry_call_retries_with_a_fresh_awaitable_each_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = FailsThenAnswers(Flaky("blip"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        answer = await aretry_call(
            call.acall,
            transient=is_flaky,
            policy=QUICK,
            what="push y",
            logger=logging.getLogger(LOGGER),
        )
    assert answer == "ok"
    assert call.tries == 2
    (line,) = retry_lines(caplog)
    assert line.startswith("push y failed (try 1 of 3): blip; retrying in ")


@pytest.mark.anyio
async def test_aretry_call_gives_up_after_the_attempts_with_the_last_error() -> None:
    call = FailsThenAnswers(*(Flaky(f"blip {n}") for n in range(1, 10)))
    with pytest.raises(Flaky, match="blip 3"):
        await aretry_call(call.acall, transient=is_flaky, policy=QUICK)
    assert call.tries == QUICK.attempts


@pytest.mark.anyio
async def test_aretry_call_does_not_retry_what_is_not_transient() -> None:
    call = FailsThenAnswers(Broken("no"))
    with pytest.raises(Broken):
        await aretry_call(call.acall, transient=is_flaky, policy=QUICK)
    assert call.tries == 1


@pytest.mark.anyio
async def test_aretry_call_never_retries_a_cancellation() -> None:
    tries = 0

    async def cancelled() -> str:
        nonlocal tries
        tries += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await aretry_call(cancelled, transient=lambda exc: True, policy=QUICK)
    assert tries == 1
