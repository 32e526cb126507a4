"""Test-wide setup: no telemetry, no network, and per-area fixtures loaded as plugins."""

from __future__ import annotations

import os

import pytest

# Every Prefect process a test starts inherits these: nothing may leave the machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A test that forgets to point Prefect at a server must fail, not quietly start its own.
os.environ["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"
# Tests build their repositories in temp folders: the checkout may fetch from local paths.
os.environ.setdefault("GANTRY_ALLOW_FILE_REPOSITORIES", "1")

pytest_plugins = [
    # The fakes first: the plugins below import them, and pytest rewrites only what it imports.
    "tests.fakes.github_api",
    "tests.fakes.snyk_api",
    "tests.plugins.leftovers",
    "tests.plugins.gitrepo",
    "tests.plugins.stack",
    "tests.plugins.engine",
    "tests.plugins.prefect_server",
    "tests.webhooks.served",
    "tests.webhooks.postgres",
]

# Markers that tell the truth: a test that reaches a real server through a fixture is "slow"
# (and "engine" for the container engine and registry) whether or not its module says so, so
# `-m "not slow"` never starts a server.
SERVER_FIXTURES = frozenset({"prefect_server", "local_stack", "postgres_url"})
ENGINE_FIXTURES = frozenset({"container_engine", "registry", "docker_api"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & ENGINE_FIXTURES:
            item.add_marker(pytest.mark.engine)
        if used & (SERVER_FIXTURES | ENGINE_FIXTURES):
            item.add_marker(pytest.mark.slow)
