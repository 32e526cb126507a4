"""A real local stack (Prefect server, process work pool, worker) for the whole test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.ports import free_port, free_port_block
from core.settings import StackSettings
from deployments.stack import Stack
from tests.fakes.github_api import FakeGitHub

WEBHOOK_SECRET = "test-webhook-secret-0123456789abcdef"
GANTRY = str(Path(sys.executable).parent / "gantry")


def stack_environment(settings: StackSettings) -> dict[str, str]:
    """Environment that points the `gantry` CLI (and StackSettings) at this test stack."""
    return {
        "GANTRY_HOME": str(settings.state_dir),
        "GANTRY_PREFECT_PORT": str(settings.prefect_port),
        "GANTRY_WEBHOOK_PORT": str(settings.webhook_port),
        "GANTRY_REGISTRY_PORT": str(settings.registry_port),
        "GANTRY_STAGING_PORT": str(settings.staging_port),
        "GANTRY_PRODUCTION_PORT": str(settings.production_port),
    }


def gantry(
    stack: Stack | None, *args: str, home: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real `gantry` command, pointed at ``stack`` (or at the state folder ``home``)."""
    env = dict(os.environ)
    if stack is not None:
        env.update(stack_environment(stack.settings))
    if home is not None:
        env["GANTRY_HOME"] = str(home)
    return subprocess.run(
        [GANTRY, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


# Ports for the local targets of a test stack: each service gets the next (staging, production)
# pair, and a session deploys a few dozen services at most.
TARGET_PORTS = 64


def free_port_pair() -> int:
    """A staging port; production is the next one, and the ports after them stay free too."""
    return free_port_block(TARGET_PORTS)


@pytest.fixture(scope="session")
def session_github() -> Iterator[FakeGitHub]:
    """A GitHub API stand-in on loopback that every flow run of the session reports to."""
    with FakeGitHub() as github:
        yield github


@pytest.fixture(scope="session")
def local_stack(
    tmp_path_factory: pytest.TempPathFactory, session_github: FakeGitHub
) -> Iterator[Stack]:
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )

    home: Path = tmp_path_factory.mktemp("gantry-home")
    staging = free_port_pair()
    settings = StackSettings(
        home=home,
        prefect_port=free_port(),
        webhook_port=free_port(),
        registry_port=free_port(),
        staging_port=staging,
        production_port=staging + 1,
    )
    env = {
        **stack_environment(settings),
        # Runs that name a GitHub repository report their statuses to the stand-in.
        "GANTRY_GITHUB_TOKEN": session_github.token,
        "GANTRY_GITHUB_API_URL": session_github.url,
        "GANTRY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        # Webhook runs clone owner/name from this folder, never from a payload's URL.
        "GANTRY_GIT_BASE_URL": (home / "git").as_uri() + "/",
        "GANTRY_WEBHOOK_REPOSITORIES": "acme/*",
        # Threads without a Prefect settings context (served apps) read the credential here.
        "PREFECT_API_AUTH_STRING": settings.api_auth_string(),
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    stack = Stack(settings)
    try:
        stack.up()
        # In-process flow runs keep their cached results in this session's state folder too.
        updates = {
            PREFECT_API_URL: settings.prefect_api_url,
            PREFECT_API_AUTH_STRING: settings.api_auth_string(),
            PREFECT_LOCAL_STORAGE_PATH: settings.state_dir / "results",
        }
        with temporary_settings(updates=updates):
            yield stack
    finally:
        # Purge: the engine's overlay storage cannot be removed as plain files afterwards.
        stack.down(purge=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
