"""Dispatcher backoff: grows exponentially, is jittered, and never exceeds its cap."""

from __future__ import annotations

from webhooks.dispatcher import Backoff


def test_delays_grow_and_stay_under_the_cap() -> None:
    backoff = Backoff(initial=0.5, cap=8.0)
    for failures in range(1, 200):
        ceiling = min(8.0, 0.5 * 2 ** (failures - 1))
        assert ceiling / 2 <= backoff.delay(failures) <= ceiling
    assert max(backoff.delay(1000) for _ in range(100)) <= 8.0


def test_delays_are_jittered() -> None:
    backoff = Backoff(initial=1.0, cap=30.0)
    assert len({backoff.delay(5) for _ in range(20)}) > 1
