"""`gantry webhooks reconcile` through the real command: GitHub's delivery log (the loopback
stand-in) against the receiver's store in the state folder; exit codes and JSON as a script reads
them. Which deliveries count as lost is tested on the function (tests/webhooks/test_reconcile.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.ports import free_port
from tests.fakes.github_api import FakeGitHub
from tests.plugins.stack import GANTRY
from webhooks.store import Delivery, open_store

pytest_plugins = ("tests.fakes.github_api",)

REPO = "acme/api"
HOOK = 7
NOW = datetime.now(UTC).replace(microsecond=0)


def reconcile(
    home: Path, github: FakeGitHub | None, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, against ``home``'s store and ``github``'s API."""
    env = {
        key: value
        for key, value in os.environ.items()
        # Only what this test gives: no session stack's credentials, store or server.
        if not key.startswith(("GANTRY_GITHUB_", "GANTRY_WEBHOOK_", "PREFECT_API_"))
    }
    env["GANTRY_HOME"] = str(home)
    env["GANTRY_PREFECT_PORT"] = str(free_port())  # no server: credentials from the environment
    if github is not None:
        env["GANTRY_GITHUB_TOKEN"] = token or github.token
        env["GANTRY_GITHUB_API_URL"] = github.url
    argv = [GANTRY, "webhooks", "reconcile", "--repo", REPO, "--hook-id", str(HOOK), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def record(home: Path, *guids: str) -> None:
    """What the receiver does with a delivery it accepted: a row in the state folder's store."""
    store = open_store(f"sqlite:///{home / 'webhooks.db'}")
    for guid in guids:
        assert store.add(Delivery(id=guid, event="push", payload="{}"))


def redelivered_ids(github: FakeGitHub) -> list[int]:
    assert {(repo, hook) for repo, hook, _ in github.state.redelivered} <= {(REPO, HOOK)}
    return [delivery_id for _, _, delivery_id in github.state.redelivered]


def test_reconcile_redelivers_what_the_store_never_recorded_within_since(
    tmp_path: Path, github_api: FakeGitHub
) -> None:
    recorded = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=5))
    lost = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=4), status_code=502)
    lost_too = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=3))
    old = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(days=2), status_code=500)
    record(tmp_path, recorded["guid"])

    result = reconcile(tmp_path, github_api, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"redelivered": [lost["guid"], lost_too["guid"]]}
    assert redelivered_ids(github_api) == [lost["id"], lost_too["id"]]

    # The redeliveries reached the receiver; a wider window (--since) finds the older loss.
    record(tmp_path, lost["guid"], lost_too["guid"])
    result = reconcile(tmp_path, github_api, "--since", "3d", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"redelivered": [old["guid"]]}
    assert redelivered_ids(github_api)[2:] == [old["id"]]

    # Nothing left to ask for: the plain form says so, and GitHub hears nothing more.
    record(tmp_path, old["guid"])
    result = reconcile(tmp_path, github_api, "--since", "3d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "redelivered 0 deliveries"
    assert len(github_api.state.redelivered) == 3


def test_reconcile_without_github_credentials_is_a_usage_error(
    tmp_path: Path, github_api: FakeGitHub
) -> None:
    github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=1))
    result = reconcile(tmp_path, None, "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no GitHub credentials" in result.stderr
    assert result.stdout == ""
    assert github_api.state.redelivered == []


def test_reconcile_with_a_bad_token_exits_1_with_githubs_answer_and_never_the_token(
    tmp_path: Path, github_api: FakeGitHub
) -> None:
    github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=1))
    token = "ghp_notTheRightToken0000000000000000"  # the stand-in refuses it
    result = reconcile(tmp_path, github_api, "--json", token=token)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: GET /repos/{REPO}/hooks/{HOOK}/deliveries: HTTP 401: Bad credentials"
    ), "one plain line, not a traceback"
    assert result.stdout == ""
    assert token not in result.stdout + result.stderr
    assert github_api.state.redelivered == []
