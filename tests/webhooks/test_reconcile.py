"""Reconciling webhook deliveries: exactly the unrecorded GUIDs are redelivered, once each, of a
repository's hook or of the GitHub App's hook."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from clients.github import AppHook, GitHubClient, RepoHook, RetryPolicy
from clients.github_auth import TokenAuth
from clients.github_errors import GitHubAuthError
from tests.fakes.github_api import APP_HOOK
from webhooks.reconcile import reconcile

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = "acme/api"
HOOK = 7
REPO_HOOK = RepoHook(REPO, HOOK)
POLICY = RetryPolicy(attempts=2, backoff=0.01, backoff_cap=0.02, max_wait=1.0)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(fake: FakeGitHub, token: str | None = None) -> GitHubClient:
    return GitHubClient(TokenAuth(SecretStr(token or fake.token)), api_url=fake.url, policy=POLICY)


async def test_only_unrecorded_guids_are_redelivered(github_api: FakeGitHub) -> None:
    recorded = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=5))
    lost = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=4), status_code=502)
    lost_too = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=3))
    store = {recorded["guid"]}

    async with client_for(github_api) as client:
        guids = await reconcile(
            client, REPO_HOOK, store.__contains__, since=NOW - timedelta(hours=1)
        )

    assert guids == [lost["guid"], lost_too["guid"]]
    redelivered_ids = [delivery_id for _, _, delivery_id in github_api.state.redelivered]
    assert redelivered_ids == [lost["id"], lost_too["id"]]


async def test_redeliveries_of_a_recorded_guid_are_skipped(github_api: FakeGitHub) -> None:
    original = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=9))
    github_api.add_delivery(
        HOOK, guid=original["guid"], redelivery=True, delivered_at=NOW - timedelta(minutes=8)
    )

    async with client_for(github_api) as client:
        guids = await reconcile(
            client, REPO_HOOK, {original["guid"]}.__contains__, since=NOW - timedelta(hours=1)
        )

    assert guids == []
    assert github_api.state.redelivered == []


async def test_a_lost_guid_with_several_attempts_is_redelivered_once(
    github_api: FakeGitHub,
) -> None:
    first = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=9), status_code=500)
    retry = github_api.add_delivery(
        HOOK,
        guid=first["guid"],
        redelivery=True,
        delivered_at=NOW - timedelta(minutes=2),
        status_code=500,
    )

    async with client_for(github_api) as client:
        guids = await reconcile(client, REPO_HOOK, set().__contains__, NOW - timedelta(hours=1))

    assert guids == [first["guid"]]
    assert [d for _, _, d in github_api.state.redelivered] == [retry["id"]]


async def test_deliveries_before_since_are_left_alone(github_api: FakeGitHub) -> None:
    github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(days=2))
    recent = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=1))

    async with client_for(github_api) as client:
        guids = await reconcile(client, REPO_HOOK, set().__contains__, NOW - timedelta(hours=1))

    assert guids == [recent["guid"]]


async def test_a_failed_redelivery_does_not_stop_the_others(github_api: FakeGitHub) -> None:
    a = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=3))
    b = github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=2))
    # Both attempts of the first redelivery (the older GUID goes first) meet a 500.
    github_api.fail_next(2, "server_error", path_contains=f"/{a['id']}/attempts")

    async with client_for(github_api) as client:
        guids = await reconcile(client, REPO_HOOK, set().__contains__, NOW - timedelta(hours=1))

    assert guids == [b["guid"]]
    assert [d for _, _, d in github_api.state.redelivered] == [b["id"]]
    assert len(github_api.requests_to(f"/{a['id']}/attempts")) == 2


async def test_bad_credentials_stop_reconciliation(github_api: FakeGitHub) -> None:
    github_api.add_delivery(HOOK)
    async with client_for(github_api, token="ghp_notTheRightToken000") as client:
        with pytest.raises(GitHubAuthError):
            await reconcile(client, REPO_HOOK, set().__contains__, NOW - timedelta(hours=1))


async def test_the_app_hooks_unrecorded_guids_are_redelivered_as_the_app(
    github_api: FakeGitHub,
) -> None:
    recorded = github_api.add_delivery(APP_HOOK, delivered_at=NOW - timedelta(minutes=9))
    lost = github_api.add_delivery(
        APP_HOOK, delivered_at=NOW - timedelta(minutes=8), status_code=502
    )
    # Listed across pages (the listing asks for GitHub's largest page, so make several).
    for i in range(120):
        github_api.add_delivery(
            APP_HOOK, guid=recorded["guid"], delivered_at=NOW - timedelta(seconds=i)
        )
    lost_too = github_api.add_delivery(APP_HOOK, delivered_at=NOW - timedelta(minutes=7))
    github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=6))  # not the App's

    client = GitHubClient(github_api.app_auth(), api_url=github_api.url, policy=POLICY)
    async with client:
        guids = await reconcile(
            client, AppHook(), {recorded["guid"]}.__contains__, NOW - timedelta(hours=1)
        )

    assert guids == [lost["guid"], lost_too["guid"]]
    assert github_api.state.app_redelivered == [lost["id"], lost_too["id"]]
    assert github_api.state.redelivered == []
    assert len(github_api.requests_to("/app/hook/deliveries", "GET")) == 2


async def test_a_token_cannot_reconcile_the_app_hook(github_api: FakeGitHub) -> None:
    github_api.add_delivery(APP_HOOK)
    async with client_for(github_api) as client:
        with pytest.raises(GitHubAuthError, match="App credentials"):
            await reconcile(client, AppHook(), set().__contains__, NOW - timedelta(hours=1))

    assert github_api.requests == []
