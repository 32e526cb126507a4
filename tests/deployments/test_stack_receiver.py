"""The local stack's webhook receiver serves every repository (``*``: it listens on loopback
only) unless ``GANTRY_WEBHOOK_REPOSITORIES`` is set; read as the receiver process reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import StackSettings
from deployments.stack import Stack
from webhooks.settings import REPOSITORIES_ENV, load_settings


def served_by(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which of a few repositories the receiver started with ``env`` serves."""
    for key, value in env.items():
        if key.startswith("GANTRY_WEBHOOK_"):
            monkeypatch.setenv(key, value)
    allowlist = load_settings().repositories
    return [name for name in ("acme/api", "someone/else") if allowlist.allows(name)]


def test_the_local_stacks_receiver_serves_every_repository_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REPOSITORIES_ENV, raising=False)
    stack = Stack(StackSettings(home=tmp_path / "state"))
    env = stack.receiver_env()
    assert env[REPOSITORIES_ENV] == "*"
    assert served_by(env, monkeypatch) == ["acme/api", "someone/else"]

    monkeypatch.setenv(REPOSITORIES_ENV, "acme/*")
    env = stack.receiver_env()
    assert env[REPOSITORIES_ENV] == "acme/*"
    assert served_by(env, monkeypatch) == ["acme/api"]
