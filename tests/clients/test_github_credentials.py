"""The GitHub credentials block: one auth mode, secrets hidden, environment fallback."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from blocks.github import (
    DEFAULT_API_URL,
    GitHubCredentials,
    github_credentials_from_env,
)

TOKEN = "ghp_envTokenValue0123456789"


def test_token_alone_is_valid_and_defaults_to_public_github() -> None:
    creds = GitHubCredentials(token=SecretStr(TOKEN))

    assert creds.api_url == DEFAULT_API_URL
    assert not creds.uses_app
    assert TOKEN not in repr(creds)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "give a token or a GitHub App"),
        ({"token": TOKEN, "app_id": "1"}, "not both"),
        ({"app_id": "1", "installation_id": 2}, "missing private_key"),
        ({"token": "   "}, "token is empty"),
        ({"token": TOKEN, "api_url": "ftp://github"}, "http"),
    ],
)
def test_invalid_auth_configurations_are_refused_without_echoing_secrets(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        GitHubCredentials(**fields)

    assert TOKEN not in str(info.value)


def test_block_type_is_named_for_gantry() -> None:
    assert GitHubCredentials.get_block_type_name() == "Gantry GitHub"
    assert GitHubCredentials.get_block_type_slug() == "gantry-github"


def test_environment_token_and_api_url_build_credentials() -> None:
    creds = github_credentials_from_env(
        {"GANTRY_GITHUB_TOKEN": TOKEN, "GANTRY_GITHUB_API_URL": "https://ghe.local/api/v3/"}
    )

    assert creds is not None
    assert creds.token is not None and creds.token.get_secret_value() == TOKEN
    assert creds.api_url == "https://ghe.local/api/v3"


def test_no_environment_variables_means_no_credentials() -> None:
    assert github_credentials_from_env({}) is None
    assert github_credentials_from_env({"GANTRY_GITHUB_TOKEN": "  "}) is None


def test_environment_app_needs_a_numeric_installation_id() -> None:
    with pytest.raises(ValueError, match="GANTRY_GITHUB_APP_INSTALLATION_ID must be an integer"):
        github_credentials_from_env(
            {
                "GANTRY_GITHUB_APP_ID": "1",
                "GANTRY_GITHUB_APP_PRIVATE_KEY": "pem",
                "GANTRY_GITHUB_APP_INSTALLATION_ID": "abc",
            }
        )
