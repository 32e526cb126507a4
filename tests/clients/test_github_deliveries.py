"""Listing webhook deliveries: Link cursors, the ``since`` cut-off, redelivery requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from clients.github import GitHubClient, RetryPolicy
from clients.github_auth import TokenAuth
from clients.github_errors import GitHubNotFoundError

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub

pytest_plugins = ("tests.fakes.github_api",)
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = "acme/api"
HOOK = 12
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(fake: FakeGitHub) -> GitHubClient:
    policy = RetryPolicy(backoff=0.01, backoff_cap=0.02, max_wait=2.0)
    return GitHubClient(TokenAuth(SecretStr(fake.token)), api_url=fake.url, policy=policy)


async def test_all_pages_are_followed_through_the_link_cursor(github_api: FakeGitHub) -> None:
    made = [
        github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=i)) for i in range(7)
    ]
    async with client_for(github_api) as client:
        deliveries = await client.list_hook_deliveries(REPO, HOOK, per_page=3)

    assert [d.id for d in deliveries] == [m["id"] for m in made]  # newest first
    pages = github_api.requests_to("/deliveries", "GET")
    assert len(pages) == 3
    assert pages[0].query == {"per_page": "3"}
    assert pages[1].query["cursor"] == f"v1_{made[2]['id']}"
    assert all(p.path == f"/repos/{REPO}/hooks/{HOOK}/deliveries" for p in pages)


async def test_listing_stops_at_the_first_page_older_than_since(github_api: FakeGitHub) -> None:
    for i in range(10):
        github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(hours=i))
    async with client_for(github_api) as client:
        deliveries = await client.list_hook_deliveries(
            REPO, HOOK, per_page=2, since=NOW - timedelta(hours=2, minutes=30)
        )

    assert [d.delivered_at for d in deliveries] == [NOW - timedelta(hours=i) for i in range(3)]
    assert len(github_api.requests_to("/deliveries", "GET")) == 2


async def test_per_page_is_capped_at_github_maximum(github_api: FakeGitHub) -> None:
    async with client_for(github_api) as client:
        assert await client.list_hook_deliveries(REPO, HOOK, per_page=500) == []

    assert github_api.requests[0].query["per_page"] == "100"


async def test_redeliver_posts_an_attempt(github_api: FakeGitHub) -> None:
    delivery = github_api.add_delivery(HOOK, status_code=500)
    async with client_for(github_api) as client:
        await client.redeliver(REPO, HOOK, delivery["id"])
        with pytest.raises(GitHubNotFoundError):
            await client.redeliver(REPO, HOOK, 1)

    assert github_api.state.redelivered == [(REPO, HOOK, delivery["id"])]
    assert github_api.requests[0].path == (
        f"/repos/{REPO}/hooks/{HOOK}/deliveries/{delivery['id']}/attempts"
    )
