"""The Snyk credentials block: token hidden and registered for redaction, environment fallback."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr, ValidationError

from blocks.snyk import (
    DEFAULT_API_URL,
    SnykCredentials,
    load_snyk_credentials,
    snyk_credentials_from_env,
)
from core.redact import forget_secrets, redact

pytestmark = pytest.mark.timeout(30)

TOKEN = "snyk-env-token-0123456789abcdef"


def test_token_alone_is_valid_and_defaults_to_snyk_api() -> None:
    creds = SnykCredentials(token=SecretStr(TOKEN))
    assert creds.api_url == DEFAULT_API_URL
    assert creds.org_id is None
    assert TOKEN not in repr(creds)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"token": "   "}, "token is empty"),
        ({"token": TOKEN, "api_url": "ftp://snyk"}, "http"),
        ({"token": TOKEN, "timeout": 0}, "greater than 0"),
    ],
)
def test_invalid_settings_are_refused_without_echoing_the_token(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        SnykCredentials(**fields)
    assert TOKEN not in str(info.value)


def test_block_type_is_named_for_gantry() -> None:
    assert SnykCredentials.get_block_type_name() == "Gantry Snyk"
    assert SnykCredentials.get_block_type_slug() == "gantry-snyk"


def test_environment_builds_credentials_and_registers_the_token() -> None:
    forget_secrets()
    assert TOKEN in redact(f"oops: {TOKEN}")
    creds = snyk_credentials_from_env(
        {
            "SNYK_TOKEN": f" {TOKEN} ",
            "SNYK_ORG_ID": "org-1",
            "GANTRY_SNYK_API_URL": "https://api.eu.snyk.io/",
        }
    )
    assert creds is not None
    assert creds.token.get_secret_value() == TOKEN
    assert (creds.org_id, creds.api_url) == ("org-1", "https://api.eu.snyk.io")
    assert redact(f"oops: {TOKEN}") == "oops: [redacted]"


def test_no_token_means_no_credentials() -> None:
    assert snyk_credentials_from_env({}) is None
    assert snyk_credentials_from_env({"SNYK_ORG_ID": "org-1", "SNYK_TOKEN": "  "}) is None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_without_a_prefect_api_the_environment_is_used_without_looking_for_a_block(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, anyio_backend: str
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("SNYK_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG, logger="gantry.snyk")
    creds = await load_snyk_credentials()
    assert creds is not None and creds.token.get_secret_value() == TOKEN
    assert "block" not in caplog.text  # no attempt to read one
    monkeypatch.delenv("SNYK_TOKEN")
    assert await load_snyk_credentials() is None
