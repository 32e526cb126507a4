"""Fixtures for observability tests: fake Datadog and PagerDuty, a DogStatsD listener."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from clients.metrics import set_metrics
from core.redact import forget_secrets
from tests.fakes.datadog_api import datadog_api  # noqa: F401 (a fixture)
from tests.fakes.dogstatsd import Datagram
from tests.fakes.pagerduty_api import pagerduty_api  # noqa: F401 (a fixture)

__all__ = ["Datagram", "StatsdListener"]


class StatsdListener:
    """A UDP socket on 127.0.0.1 standing in for the Datadog agent."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def receive(self, count: int, timeout: float = 2.0) -> list[Datagram]:
        """The next ``count`` metric lines; fails when they do not arrive in time."""
        return [Datagram.parse(line) for line in self.receive_lines(count, timeout)]

    def receive_lines(self, count: int, timeout: float = 2.0, prefix: str = "") -> list[str]:
        """The next ``count`` raw lines starting with ``prefix`` (others are dropped)."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while len(lines) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} {prefix or 'datagrams'}, got {lines!r}")
            self.sock.settimeout(remaining)
            try:
                payload = self.sock.recv(65535)
            except TimeoutError:
                continue
            received = payload.decode().split("\n")
            lines.extend(line for line in received if line and line.startswith(prefix))
        return lines

    def nothing_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.sock.recv(65535)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def statsd() -> Iterator[StatsdListener]:
    listener = StatsdListener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture(autouse=True)
def _clean_global_state() -> Iterator[None]:
    """Registered secrets, the shared Metrics and the logging setup do not leak between tests."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    uvicorn_state = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    }
    forget_secrets()
    set_metrics(None)
    yield
    forget_secrets()
    set_metrics(None)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, (handlers, propagate) in uvicorn_state.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
