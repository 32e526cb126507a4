"""GitHub App authentication: JWT → installation token, cached, renewed, never leaked."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from blocks.github import GitHubCredentials
from clients.github import GitHubClient, RetryPolicy
from clients.github_auth import AppAuth
from clients.github_errors import GitHubAuthError

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = "acme/api"
SHA = "0123456789abcdef0123456789abcdef01234567"
FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_wait=2.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def app_client(
    fake: FakeGitHub,
    *,
    installation_id: int | None = None,
    private_key: str | None = None,
    refresh_margin: float = 300.0,
) -> GitHubClient:
    auth = AppAuth(
        fake.app_id,
        SecretStr(private_key or fake.private_key_pem),
        installation_id or fake.installation_id,
        refresh_margin=refresh_margin,
    )
    return GitHubClient(auth, api_url=fake.url, policy=FAST, timeout=5)


def test_app_jwt_is_rs256_backdated_short_lived_and_issued_by_the_app(
    github_api: FakeGitHub,
) -> None:
    auth = AppAuth(github_api.app_id, SecretStr(github_api.private_key_pem), 1)
    now = time.time()
    token = auth.app_jwt(now).get_secret_value()

    private = serialization.load_pem_private_key(github_api.private_key_pem.encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    claims = jwt.decode(token, private.public_key(), algorithms=["RS256"])
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert claims["iss"] == github_api.app_id
    assert claims["iat"] == int(now) - 60
    assert 0 < claims["exp"] - now <= 600


async def test_installation_token_is_exchanged_once_and_used_as_bearer(
    github_api: FakeGitHub,
) -> None:
    async with app_client(github_api) as client:
        await client.create_commit_status(REPO, SHA, "pending", "gantry/lint")
        await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    exchanges = github_api.requests_to("/access_tokens", "POST")
    statuses = github_api.requests_to("/statuses/")
    assert len(exchanges) == 1
    assert exchanges[0].path == f"/app/installations/{github_api.installation_id}/access_tokens"
    [issued] = github_api.state.issued_tokens
    assert issued.startswith("ghs_")
    assert [r.headers["authorization"] for r in statuses] == [f"Bearer {issued}"] * 2


async def test_token_near_expiry_is_renewed_before_use(github_api: FakeGitHub) -> None:
    github_api.installation_token_ttl = 120
    # A margin longer than the token's life: every call finds the cached token too old.
    async with app_client(github_api, refresh_margin=600) as client:
        await client.create_commit_status(REPO, SHA, "pending", "gantry/lint")
        await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert len(github_api.requests_to("/access_tokens")) == 2
    assert len(github_api.state.issued_tokens) == 2


async def test_revoked_installation_token_is_replaced_once_on_401(github_api: FakeGitHub) -> None:
    async with app_client(github_api) as client:
        await client.create_commit_status(REPO, SHA, "pending", "gantry/lint")
        github_api.state.issued_tokens.clear()  # GitHub revoked it
        await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert len(github_api.requests_to("/access_tokens")) == 2
    assert len(github_api.requests_to("/statuses/")) == 3


async def test_wrong_private_key_is_an_auth_error_naming_no_secret(
    github_api: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    async with app_client(github_api, private_key=other_pem) as client:
        with pytest.raises(GitHubAuthError, match="token exchange refused") as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert info.value.status == 401
    assert "PRIVATE KEY" not in str(info.value)
    assert github_api.requests_to("/statuses/") == []
    assert all("PRIVATE KEY" not in r.getMessage() for r in caplog.records)


async def test_unknown_installation_is_an_auth_error(github_api: FakeGitHub) -> None:
    async with app_client(github_api, installation_id=1) as client:
        with pytest.raises(GitHubAuthError, match="installation 1 not found"):
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")


async def test_private_key_that_is_not_a_key_is_refused_without_echoing_it(
    github_api: FakeGitHub,
) -> None:
    async with app_client(github_api, private_key="not-a-key-s3cr3t") as client:
        with pytest.raises(GitHubAuthError, match="not a usable RSA private key") as info:
            await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert "s3cr3t" not in str(info.value)
    assert github_api.requests == []


async def test_app_block_builds_an_app_client(github_api: FakeGitHub) -> None:
    creds = GitHubCredentials(
        api_url=github_api.url,
        app_id=github_api.app_id,
        private_key=SecretStr(github_api.private_key_pem),
        installation_id=github_api.installation_id,
    )
    async with GitHubClient.from_credentials(creds, policy=FAST) as client:
        status = await client.create_commit_status(REPO, SHA, "success", "gantry/lint")

    assert status.state == "success"
    assert "PRIVATE KEY" not in repr(creds)
    assert len(github_api.requests_to("/access_tokens")) == 1
