"""Snyk credentials and endpoint as a Prefect Block, with an environment fallback.

Loading either registers the token with ``core.redact`` so it never reaches a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, HttpUrl, SecretStr, field_validator

from blocks.saved import load_saved_block
from core.redact import register_model_secrets

logger = logging.getLogger("gantry.snyk")

DEFAULT_API_URL = "https://api.snyk.io"
DEFAULT_BLOCK_NAME = "gantry-snyk"

ENV_TOKEN = "SNYK_TOKEN"  # noqa: S105 (a variable name, not a secret)
ENV_API_URL = "GANTRY_SNYK_API_URL"
ENV_ORG_ID = "SNYK_ORG_ID"


class SnykCredentials(Block):
    """How Gantry reaches Snyk for the dependency vulnerability scan."""

    _block_type_name = "Gantry Snyk"
    _description = (
        "Snyk API token, organization and endpoint Gantry uses to test dependency manifests "
        "for known vulnerabilities."
    )
    _documentation_url = HttpUrl("https://docs.snyk.io/snyk-api")

    # Validation errors would otherwise echo the raw input, token included.
    model_config = ConfigDict(hide_input_in_errors=True)

    token: SecretStr = Field(description="Snyk API token (personal or service account).")
    org_id: str | None = Field(
        default=None,
        description="Organization ID; needed for lock files (the REST API is per organization).",
    )
    api_url: str = Field(
        default=DEFAULT_API_URL,
        description="API base URL (regional tenants: https://api.eu.snyk.io and similar).",
    )
    timeout: float = Field(default=30.0, gt=0, description="Seconds one request may take.")

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("token is empty")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("org_id")
    @classmethod
    def _org_id_or_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("api_url")
    @classmethod
    def _api_url_is_http(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("api_url must be an http(s) URL, for example https://api.snyk.io")
        return value


def snyk_credentials_from_env(env: Mapping[str, str] | None = None) -> SnykCredentials | None:
    """Credentials from SNYK_TOKEN, GANTRY_SNYK_API_URL and SNYK_ORG_ID; None without a token."""
    env = os.environ if env is None else env
    token = env.get(ENV_TOKEN, "").strip()
    if not token:
        return None
    credentials = SnykCredentials(
        token=SecretStr(token),
        org_id=env.get(ENV_ORG_ID, "").strip() or None,
        api_url=env.get(ENV_API_URL, "").strip() or DEFAULT_API_URL,
    )
    register_model_secrets(credentials)
    return credentials


async def load_snyk_credentials(
    block_name: str | None = DEFAULT_BLOCK_NAME,
) -> SnykCredentials | None:
    """The saved block named ``block_name``, else credentials from the environment, else None."""
    block = await load_saved_block(SnykCredentials, block_name)
    if block is not None:
        return block
    return snyk_credentials_from_env()
