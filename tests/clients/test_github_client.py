"""GitHubClient against a real local server answering like GitHub's REST API."""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from blocks.github import GitHubCredentials
from clients.github import GitHubClient, RetryPolicy
from clients.github_auth import TokenAuth
from clients.github_errors import (
    GitHubAuthError,
    GitHubNotFoundError,
    GitHubRateLimited,
    GitHubUnavailable,
    GitHubValidationError,
)

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = "acme/api"
SHA = "0123456789abcdef0123456789abcdef01234567"
FAST = RetryPolicy(attempts=4, backoff=0.01, backoff_cap=0.02, max_wait=3.0, reset_slack=0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def client_for(
    fake: FakeGitHub, token: str | None = None, policy: RetryPolicy = FAST
) -> GitHubClient:
    return GitHubClient(
        TokenAuth(SecretStr(token or fake.token)), api_url=fake.url, policy=policy, timeout=5
    )


async def test_commit_status_posts_state_context_and_link_with_github_headers(
    github_api: FakeGitHub,
) -> None:
    async with client_for(github_api) as client:
        status = await client.create_commit_status(
            REPO, SHA, "success", "gantry/lint", "passed in 3.1s", "http://ui/runs/flow-run/1"
        )

    assert status.state == "success"
    assert status.context == "gantry/lint"
    [request] = github_api.requests
    assert (request.method, request.path) == ("POST", f"/repos/{REPO}/statuses/{SHA}")
    assert request.json == {
        "state": "success",
        "context": "gantry/lint",
        "description": "passed in 3.1s",
        "target_url": "http://ui/runs/flow-run/1",
    }
    assert request.headers["authorization"] == f"Bearer {github_api.token}"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"


async def test_long_description_is_truncated_to_github_limit(github_api: FakeGitHub) -> None:
    async with client_for(github_api) as client:
        status = await client.create_commit_status(REPO, SHA, "failure", "gantry/unit", "x" * 500)

    assert status.description is not None
    assert len(status.description) == 140
    assert status.description.endswith("…")


async def test_status_limit_per_context_is_a_validation_error(github_api: FakeGitHub) -> None:
    github_api.status_limit = 1
    async with client_for(github_api) as client:
        await client.create_commit_status(REPO, SHA, "pending", "gantry/lint")
        with pytest.raises(GitHubValidationError, match="maximum number of statuses") as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert info.value.status == 422
    assert info.value.errors[0]["field"] == "context"
    assert len(github_api.requests) == 2  # a 422 is never retried


async def test_server_errors_are_retried_then_succeed(github_api: FakeGitHub) -> None:
    github_api.fail_next(2, "server_error", status=502)
    async with client_for(github_api) as client:
        status = await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert status.state == "success"
    assert len(github_api.requests) == 3


async def test_server_errors_beyond_the_attempts_raise_unavailable(github_api: FakeGitHub) -> None:
    github_api.fail_next(10, "server_error")
    async with client_for(github_api) as client:
        with pytest.raises(GitHubUnavailable, match="HTTP 500 after 4 attempts") as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert info.value.status == 500
    assert len(github_api.requests) == FAST.attempts


async def test_connection_refused_raises_unavailable_after_bounded_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = GitHubClient(
        TokenAuth(SecretStr("ghp_unused_token_value")),
        api_url=f"http://127.0.0.1:{port}",
        policy=FAST,
        timeout=2,
    )
    async with client:
        with pytest.raises(GitHubUnavailable, match="ConnectError after 4 attempts") as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert info.value.__cause__ is not None  # the httpx error is kept as the cause


async def test_bad_token_raises_auth_error_at_once_without_the_token(
    github_api: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "ghp_wrongTokenValue0123456789"
    async with client_for(github_api, token=wrong) as client:
        with pytest.raises(GitHubAuthError, match="Bad credentials") as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert info.value.status == 401
    assert len(github_api.requests) == 1
    assert wrong not in str(info.value)
    assert wrong not in repr(info.value)
    assert wrong not in repr(client)
    assert all(wrong not in record.getMessage() for record in caplog.records)


async def test_secondary_rate_limit_waits_retry_after_then_succeeds(
    github_api: FakeGitHub,
) -> None:
    github_api.fail_next(1, "secondary_rate_limit", retry_after=1)
    started = time.monotonic()
    async with client_for(github_api) as client:
        await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert time.monotonic() - started >= 1.0
    assert len(github_api.requests) == 2


async def test_rate_limit_longer_than_the_bound_raises_without_waiting(
    github_api: FakeGitHub,
) -> None:
    github_api.fail_next(1, "secondary_rate_limit", retry_after=120)
    started = time.monotonic()
    async with client_for(github_api) as client:
        with pytest.raises(GitHubRateLimited) as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    # Raised before the two minutes GitHub asked for could have passed: it never slept on them.
    assert time.monotonic() - started < 120
    assert info.value.retry_after == 120
    assert len(github_api.requests) == 1


async def test_endless_zero_second_rate_limits_still_end(github_api: FakeGitHub) -> None:
    github_api.fail_next(20, "secondary_rate_limit", retry_after=0)
    async with client_for(github_api) as client:
        with pytest.raises(GitHubRateLimited):
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert len(github_api.requests) == FAST.attempts + 1


async def test_secondary_rate_limit_without_retry_after_waits_at_least_the_minimum(
    github_api: FakeGitHub,
) -> None:
    github_api.fail_next(1, "secondary_rate_limit")
    policy = RetryPolicy(backoff=0.01, max_wait=5.0, secondary_min_wait=0.3)
    started = time.monotonic()
    async with client_for(github_api, policy=policy) as client:
        await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert time.monotonic() - started >= 0.3


async def test_primary_rate_limit_waits_until_reset(github_api: FakeGitHub) -> None:
    github_api.fail_next(1, "primary_rate_limit", reset_in=1)
    reset = int(time.time()) + 1
    async with client_for(github_api) as client:
        await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert time.time() >= reset
    [limited, retried] = github_api.requests
    assert retried.path == limited.path


async def test_primary_rate_limit_past_the_bound_raises_rate_limited(
    github_api: FakeGitHub,
) -> None:
    github_api.fail_next(1, "primary_rate_limit", reset_in=3600)
    async with client_for(github_api) as client:
        with pytest.raises(GitHubRateLimited, match="rate limited") as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert info.value.status == 429
    assert info.value.retry_after is not None and info.value.retry_after > 3000


async def test_deployment_is_created_without_auto_merge_or_required_contexts(
    github_api: FakeGitHub,
) -> None:
    async with client_for(github_api) as client:
        deployment = await client.create_deployment(
            REPO,
            SHA,
            "staging",
            payload={"digests": {"api": "sha256:abc"}},
            description="deploy api",
            production_environment=False,
            transient_environment=False,
        )
        status = await client.create_deployment_status(
            REPO,
            deployment.id,
            "success",
            environment_url="http://staging.local",
            log_url="http://ui/runs/flow-run/2",
            description="deployed",
        )

    assert deployment.environment == "staging"
    assert status.state == "success"
    assert status.environment_url == "http://staging.local"
    create = github_api.requests[0]
    assert create.path == f"/repos/{REPO}/deployments"
    assert create.json["auto_merge"] is False
    assert create.json["required_contexts"] == []
    assert create.json["task"] == "deploy"
    assert create.json["payload"] == {"digests": {"api": "sha256:abc"}}
    assert github_api.requests[1].path == f"/repos/{REPO}/deployments/{deployment.id}/statuses"


async def test_status_for_unknown_deployment_is_not_found(github_api: FakeGitHub) -> None:
    async with client_for(github_api) as client:
        with pytest.raises(GitHubNotFoundError):
            await client.create_deployment_status(REPO, 999999, "success")


async def test_repository_names_that_are_not_owner_slash_name_are_refused(
    github_api: FakeGitHub,
) -> None:
    async with client_for(github_api) as client:
        for bad in ("acme", "acme/api/../x", "../api", "acme/api?x=1"):
            with pytest.raises(ValueError, match="owner/name"):
                await client.create_commit_status(bad, SHA, "success", "gantry/lint")

    assert github_api.requests == []


async def test_block_with_token_builds_a_client_whose_repr_hides_it() -> None:
    creds = GitHubCredentials(token=SecretStr("ghp_blockTokenValue12345"), api_url="http://x")
    async with GitHubClient.from_credentials(creds) as client:
        shown = repr(client)

    assert client.api_url == "http://x"
    assert "ghp_blockTokenValue12345" not in shown
    assert "ghp_blockTokenValue12345" not in repr(creds)
