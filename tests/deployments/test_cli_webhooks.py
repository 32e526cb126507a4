"""`gantry webhooks reconcile` through the real command: GitHub's delivery log (the loopback
stand-in) against the receiver's store in the state folder, of a repository's hook (--repo,
--hook-id) or the GitHub App's (--app); exit codes and JSON as a script reads them. Which
deliveries count as lost is tested on the function (tests/webhooks/test_reconcile.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.ports import free_port
from tests.fakes.github_api import APP_HOOK, FakeGitHub
from tests.plugins.stack import GANTRY
from webhooks.store import Delivery, open_store

REPO = "acme/api"
HOOK = 7
NOW = datetime.now(UTC).replace(microsecond=0)


def run_reconcile(
    home: Path, credentials: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, against ``home``'s store and these credentials."""
    env = {
        key: value
        for key, value in os.environ.items()
        # Only what this test gives: no session stack's credentials, store or server.
        if not key.startswith(("GANTRY_GITHUB_", "GANTRY_WEBHOOK_", "PREFECT_API_"))
    }
    env["GANTRY_HOME"] = str(home)
    env["GANTRY_PREFECT_PORT"] = str(free_port())  # no server: credentials from the environment
    env.update(credentials)
    argv = [GANTRY, "webhooks", "reconcile", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def token_env(github: FakeGitHub, token: str | None = None) -> dict[str, str]:
    return {"GANTRY_GITHUB_TOKEN": token or github.token, "GANTRY_GITHUB_API_URL": github.url}


def app_env(github: FakeGitHub) -> dict[str, str]:
    """The GitHub App's credentials as an install fed by the App's webhook sets them."""
    return {
        "GANTRY_GITHUB_APP_ID": github.app_id,
        "GANTRY_GITHUB_APP_PRIVATE_KEY": github.private_key_pem,
        "GANTRY_GITHUB_APP_INSTALLATION_ID": str(github.installation_id),
        "GANTRY_GITHUB_API_URL": github.url,
    }


def reconcile(
    home: Path, github: FakeGitHub | None, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``reconcile --repo REPO --hook-id HOOK`` with a token for ``github`` (none without it)."""
    credentials = token_env(github, token) if github is not None else {}
    return run_reconcile(home, credentials, "--repo", REPO, "--hook-id", str(HOOK), *args)


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


def test_reconcile_app_redelivers_the_app_hooks_lost_deliveries_as_the_app(
    tmp_path: Path, github_api: FakeGitHub
) -> None:
    recorded = github_api.add_delivery(APP_HOOK, delivered_at=NOW - timedelta(minutes=5))
    lost = github_api.add_delivery(
        APP_HOOK, event="pull_request", delivered_at=NOW - timedelta(minutes=4), status_code=502
    )
    github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=3))  # a repository's
    record(tmp_path, recorded["guid"])

    result = run_reconcile(tmp_path, app_env(github_api), "--app", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"redelivered": [lost["guid"]]}
    assert github_api.state.app_redelivered == [lost["id"]]
    assert github_api.state.redelivered == []
    # As the App (its JWT), never with an installation token, and the key never shown.
    assert github_api.requests_to("/access_tokens") == []
    assert "PRIVATE KEY" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [("--app", "--repo", REPO), ("--app", "--hook-id", str(HOOK)), ()],
    ids=["app-and-repo", "app-and-hook", "neither"],
)
def test_reconcile_needs_either_app_or_a_repository_hook(
    tmp_path: Path, github_api: FakeGitHub, args: tuple[str, ...]
) -> None:
    github_api.add_delivery(APP_HOOK, delivered_at=NOW - timedelta(minutes=1))
    result = run_reconcile(tmp_path, app_env(github_api), *args, "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one line, not a usage box"
    assert result.stdout == ""
    assert github_api.requests == []


def test_reconcile_app_with_a_token_is_a_usage_error(
    tmp_path: Path, github_api: FakeGitHub
) -> None:
    github_api.add_delivery(APP_HOOK, delivered_at=NOW - timedelta(minutes=1))
    result = run_reconcile(tmp_path, token_env(github_api), "--app", "--json")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--app needs GitHub App credentials" in result.stderr
    assert github_api.token not in result.stderr
    assert result.stdout == ""
    assert github_api.requests == []
