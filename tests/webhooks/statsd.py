"""The receiver's and the dispatcher's metrics sent to a real DogStatsD stand-in (UDP loopback).

The receiver under test is served in a thread of the test's process (``ServedReceiver``) and the
dispatcher runs on the test's loop: both send through the process-wide ``Metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from clients.metrics import Metrics, set_metrics
from tests.fakes.dogstatsd import Datagram, DogStatsdAgent


@contextlib.contextmanager
def metrics_to_agent() -> Iterator[DogStatsdAgent]:
    """The process-wide ``Metrics`` sending to a listening agent; reset (off) afterwards."""
    with DogStatsdAgent() as agent:
        set_metrics(Metrics("127.0.0.1", agent.port))
        try:
            yield agent
        finally:
            set_metrics(None)


def named(agent: DogStatsdAgent, name: str) -> list[Datagram]:
    return [d for d in agent.datagrams() if d.name == name]


async def at_least(
    agent: DogStatsdAgent, name: str, count: int, seconds: float = 10.0
) -> list[Datagram]:
    """The ``name`` datagrams once ``count`` have arrived; fails naming what did at the deadline."""
    deadline = time.monotonic() + seconds
    while len(found := named(agent, name)) < count:
        assert time.monotonic() < deadline, f"expected {count} {name}, got {found!r}"
        await asyncio.sleep(0.05)
    return found
