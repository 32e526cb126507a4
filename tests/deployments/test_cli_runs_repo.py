"""`gantry runs --repo R`: which runs a repository's name, URL, path or local clone selects.

Real git clones whose ``origin`` is a GitHub URL in each of its forms; the run parameters are
those the pipelines record (webhooks/events.py: the clone URL and owner/name; the CLI by path:
the resolved path).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deployments.cli.api import clone_full_name, repository_matcher

WEBHOOK_RUN = {
    "repository": "https://github.com/Acme/Payments.git",
    "repository_name": "Acme/Payments",
}


def clone(folder: Path, origin: str | None) -> Path:
    folder.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    if origin is not None:
        subprocess.run(["git", "-C", str(folder), "remote", "add", "origin", origin], check=True)
    return folder


@pytest.mark.parametrize(
    "origin",
    [
        "https://github.com/acme/payments.git",
        "https://github.com/acme/payments",
        "ssh://git@github.com/acme/payments.git",
        "git@github.com:acme/payments.git",
    ],
)
def test_a_local_clone_selects_the_runs_its_origins_webhooks_started(
    tmp_path: Path, origin: str
) -> None:
    checkout = clone(tmp_path / "payments", origin)
    assert clone_full_name(checkout) == "acme/payments"
    matches = repository_matcher(str(checkout))
    assert matches(WEBHOOK_RUN)  # GitHub compares names without case; so do we
    assert matches({"repository": str(checkout.resolve())})  # started by path, as before
    assert not matches({"repository_name": "acme/payments-api"})
    assert not matches({"repository_name": "other/payments"})


def test_a_clone_without_a_github_origin_selects_only_runs_started_by_its_path(
    tmp_path: Path,
) -> None:
    for checkout in (
        clone(tmp_path / "none" / "payments", None),
        clone(tmp_path / "local" / "payments", str(tmp_path / "upstream.git")),
    ):
        assert clone_full_name(checkout) is None
        matches = repository_matcher(str(checkout))
        assert not matches(WEBHOOK_RUN)
        assert not matches({"repository_name": "payments"})
        assert matches({"repository": str(checkout.resolve())})


def test_a_name_or_url_selects_by_owner_and_name_in_any_case(tmp_path: Path) -> None:
    for repo in ("acme/payments", "ACME/Payments", "https://github.com/acme/payments"):
        assert repository_matcher(repo)(WEBHOOK_RUN), repo
    assert not repository_matcher("acme/pay")(WEBHOOK_RUN)
    # A run started by a path is named by its folder only: an owner/name never selects it.
    assert not repository_matcher("acme/payments")({"repository": str(tmp_path / "payments")})
