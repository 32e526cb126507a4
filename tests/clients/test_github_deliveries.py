"""Listing webhook deliveries: Link cursors, the ``since`` cut-off, redelivery requests; of a
repository's hook with any credentials, of the GitHub App's hook only with the App's JWT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import jwt
import pytest
from pydantic import SecretStr

from clients.github import AppHook, GitHubClient, RepoHook, RetryPolicy
from clients.github_auth import TokenAuth
from clients.github_errors import GitHubAuthError, GitHubNotFoundError
from tests.fakes.github_api import APP_HOOK

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = "acme/api"
HOOK = 12
REPO_HOOK = RepoHook(REPO, HOOK)
POLICY = RetryPolicy(backoff=0.01, backoff_cap=0.02, max_wait=2.0)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(fake: FakeGitHub) -> GitHubClient:
    return GitHubClient(TokenAuth(SecretStr(fake.token)), api_url=fake.url, policy=POLICY)


def app_client_for(fake: FakeGitHub) -> GitHubClient:
    return GitHubClient(fake.app_auth(), api_url=fake.url, policy=POLICY)


async def test_all_pages_are_followed_through_the_link_cursor(github_api: FakeGitHub) -> None:
    made = [
        github_api.add_delivery(HOOK, delivered_at=NOW - timedelta(minutes=i)) for i in range(7)
    ]
    async with client_for(github_api) as client:
        deliveries = await client.list_hook_deliveries(REPO_HOOK, per_page=3)

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
            REPO_HOOK, per_page=2, since=NOW - timedelta(hours=2, minutes=30)
        )

    assert [d.delivered_at for d in deliveries] == [NOW - timedelta(hours=i) for i in range(3)]
    assert len(github_api.requests_to("/deliveries", "GET")) == 2


async def test_per_page_is_capped_at_github_maximum(github_api: FakeGitHub) -> None:
    async with client_for(github_api) as client:
        assert await client.list_hook_deliveries(REPO_HOOK, per_page=500) == []

    assert github_api.requests[0].query["per_page"] == "100"


async def test_redeliver_posts_an_attempt(github_api: FakeGitHub) -> None:
    delivery = github_api.add_delivery(HOOK, status_code=500)
    async with client_for(github_api) as client:
        await client.redeliver(REPO_HOOK, delivery["id"])
        with pytest.raises(GitHubNotFoundError):
            await client.redeliver(REPO_HOOK, 1)

    assert github_api.state.redelivered == [(REPO, HOOK, delivery["id"])]
    assert github_api.requests[0].path == (
        f"/repos/{REPO}/hooks/{HOOK}/deliveries/{delivery['id']}/attempts"
    )


async def test_app_hook_deliveries_are_paged_and_redelivered_with_the_app_jwt(
    github_api: FakeGitHub,
) -> None:
    made = [
        github_api.add_delivery(APP_HOOK, delivered_at=NOW - timedelta(minutes=i)) for i in range(5)
    ]
    github_api.add_delivery(HOOK, delivered_at=NOW)  # a repository hook's: not the App's
    async with app_client_for(github_api) as client:
        deliveries = await client.list_hook_deliveries(AppHook(), per_page=2)
        await client.redeliver(AppHook(), made[3]["id"])

    assert [d.id for d in deliveries] == [m["id"] for m in made]
    assert {d.installation_id for d in deliveries} == {github_api.installation_id}
    pages = github_api.requests_to("/app/hook/deliveries", "GET")
    assert [p.query.get("cursor") for p in pages] == [
        None,
        f"v1_{made[1]['id']}",
        f"v1_{made[3]['id']}",
    ]
    assert github_api.state.app_redelivered == [made[3]["id"]]
    assert github_api.state.redelivered == []
    attempt = github_api.requests_to("/attempts", "POST")
    assert [a.path for a in attempt] == [f"/app/hook/deliveries/{made[3]['id']}/attempts"]
    # Authenticated as the App itself: its JWT, not an installation token (none was minted).
    for request in [*pages, *attempt]:
        bearer = request.headers["authorization"].removeprefix("Bearer ")
        claims = jwt.decode(bearer, options={"verify_signature": False})
        assert claims["iss"] == github_api.app_id
    assert github_api.requests_to("/access_tokens") == []


async def test_the_app_hook_refuses_an_installation_token(github_api: FakeGitHub) -> None:
    delivery = github_api.add_delivery(APP_HOOK, status_code=500)
    async with app_client_for(github_api) as client:
        # A repository endpoint makes the client mint an installation token ...
        await client.list_hook_deliveries(REPO_HOOK)
    (token,) = github_api.state.issued_tokens
    # ... which the App's hook does not take, as GitHub does not.
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=github_api.url, headers=headers) as http:
        listing = await http.get("/app/hook/deliveries")
        attempt = await http.post(f"/app/hook/deliveries/{delivery['id']}/attempts")

    assert (listing.status_code, attempt.status_code) == (401, 401)
    assert github_api.state.app_redelivered == []


async def test_a_token_client_is_refused_the_app_hook_before_any_request(
    github_api: FakeGitHub,
) -> None:
    async with client_for(github_api) as client:
        with pytest.raises(GitHubAuthError, match="App credentials"):
            await client.list_hook_deliveries(AppHook())
        with pytest.raises(GitHubAuthError, match="App credentials"):
            await client.redeliver(AppHook(), 1)

    assert github_api.requests == []
