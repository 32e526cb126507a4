"""Dispatcher backoff: grows exponentially, is jittered, and never exceeds its cap."""

from __future__ import annotations

from clients.retry import RetryPolicy


def test_delays_grow_and_stay_under_the_cap() -> None:
    backoff = RetryPolicy(backoff=0.5, backoff_cap=8.0)
    for failures in range(1, 200):
        ceiling = min(8.0, 0.5 * 2 ** (failures - 1))
        assert ceiling / 2 <= backoff.delay(failures) <= ceiling
    assert max(backoff.delay(1000) for _ in range(100)) <= 8.0


def test_delays_are_jittered() -> None:
    backoff = RetryPolicy(backoff=1.0, backoff_cap=30.0)
    assert len({backoff.delay(5) for _ in range(20)}) > 1
