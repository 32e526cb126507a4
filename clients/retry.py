"""The retry bounds Gantry shares: bounded tries, jittered backoff, a wait budget.

The HTTP clients drive ``Retries`` themselves (what is retried, how a rate limit waits and
what is raised stay with each client). Any other loop that calls something flaky uses
``retry_call`` / ``aretry_call``, which apply the same policy around one call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

_random = secrets.SystemRandom()
_logger = logging.getLogger("gantry.retry")

T = TypeVar("T")
RetryLogger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may keep trying. Clients subclass it for their own defaults; tests
    shrink every number."""

    # Tries in all for failed requests; also the most rate-limit waits where a client counts them.
    attempts: int = 4
    # First backoff ceiling in seconds, doubled per retry, capped; the sleep is drawn below it.
    backoff: float = 0.5
    backoff_cap: float = 8.0
    # Total seconds one call may spend sleeping.
    max_wait: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to sleep after failed try ``attempt`` (from 1), with equal jitter: between
        half the ceiling and the ceiling, so calls failing together do not retry in lockstep."""
        # The exponent is capped: a loop that counts failures for hours must not overflow.
        ceiling = min(self.backoff_cap, self.backoff * 2 ** min(max(attempt - 1, 0), 30))
        return _random.uniform(ceiling / 2, ceiling)


class Retries:
    """One call's progress against its policy: failed tries, rate-limit waits, seconds slept."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.limited = 0
        self.waited = 0.0

    def failed(self, at_least: float = 0.0) -> float | None:
        """Count a failed try: the backoff (or ``at_least``, if longer) before the next one,
        or None when that try would exceed the attempts or the wait budget."""
        self.failures += 1
        delay = max(self.policy.delay(self.failures), at_least)
        over = self.failures >= self.policy.attempts or self.waited + delay > self.policy.max_wait
        return None if over else delay

    def may_wait(self, delay: float) -> bool:
        """Count a rate-limit wait of ``delay`` seconds: whether it is within the attempts (as
        a count of waits) and the wait budget."""
        self.limited += 1
        return self.limited <= self.policy.attempts and self.waited + delay <= self.policy.max_wait

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.waited += delay


def retry_after_seconds(response: httpx.Response, *, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds, from delta-seconds or an HTTP-date (past dates are 0);
    None when the header is absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return None if math.isnan(seconds) else max(seconds, 0.0)


def retry_call(
    call: Callable[[], T],
    *,
    transient: Callable[[Exception], bool],
    policy: RetryPolicy | None = None,
    what: str = "call",
    logger: RetryLogger | None = None,
) -> T:
    """``call()``, tried again after each failure ``transient`` accepts, within ``policy``.

    A failure that is not transient, or the one after the attempts or the wait budget run
    out, propagates unchanged: the caller converts errors where they enter, once. Each retry
    logs one warning naming ``what`` and ``str(exc)``, so ``call`` should raise errors whose
    text holds no secret (the caller's own, converted at its boundary).
    """
    retries = Retries(policy or RetryPolicy())
    while True:
        try:
            return call()
        except Exception as exc:
            delay = _next_delay(retries, exc, transient, what, logger)
            if delay is None:
                raise
        time.sleep(delay)
        retries.waited += delay


async def aretry_call(
    call: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[Exception], bool],
    policy: RetryPolicy | None = None,
    what: str = "call",
    logger: RetryLogger | None = None,
) -> T:
    """``await call()``, tried again after each failure ``transient`` accepts, within ``policy``.

    ``call`` is a factory so that every try gets a fresh awaitable. Cancellation is never
    retried (it is not an ``Exception``). Otherwise as ``retry_call``.
    """
    retries = Retries(policy or RetryPolicy())
    while True:
        try:
            return await call()
        except Exception as exc:
            delay = _next_delay(retries, exc, transient, what, logger)
            if delay is None:
                raise
        await retries.sleep(delay)


def _next_delay(
    retries: Retries,
    exc: Exception,
    transient: Callable[[Exception], bool],
    what: str,
    logger: RetryLogger | None,
) -> float | None:
    """The sleep before the next try, logged, or None when ``exc`` should propagate."""
    if not transient(exc):
        return None
    delay = retries.failed()
    if delay is None:
        return None
    (logger or _logger).warning(
        "%s failed (try %d of %d): %s; retrying in %.2f s",
        what,
        retries.failures,
        retries.policy.attempts,
        exc,
        delay,
    )
    return delay
