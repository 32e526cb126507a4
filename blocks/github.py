"""GitHub credentials and endpoint as a Prefect Block, with an environment fallback."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from prefect.blocks.core import Block
from pydantic import (
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    field_validator,
    model_validator,
)

from blocks.saved import load_saved_block
from core.redact import register_model_secrets

logger = logging.getLogger("gantry.github")

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_BLOCK_NAME = "gantry-github"

ENV_TOKEN = "GANTRY_GITHUB_TOKEN"  # noqa: S105 (a variable name, not a secret)
ENV_API_URL = "GANTRY_GITHUB_API_URL"
ENV_UI_URL = "GANTRY_GITHUB_UI_URL"
ENV_APP_ID = "GANTRY_GITHUB_APP_ID"
ENV_APP_PRIVATE_KEY = "GANTRY_GITHUB_APP_PRIVATE_KEY"
ENV_APP_INSTALLATION_ID = "GANTRY_GITHUB_APP_INSTALLATION_ID"


class GitHubCredentials(Block):
    """How Gantry authenticates to GitHub: a token, or a GitHub App installation (not both)."""

    _block_type_name = "Gantry GitHub"
    _description = (
        "GitHub REST API endpoint and credentials Gantry uses for stage results, deployments "
        "and webhook redelivery: a GitHub App installation (check runs with annotations and "
        "re-run buttons), or a fine-grained token (commit statuses)."
    )
    _documentation_url = HttpUrl("https://docs.github.com/en/rest")

    # Validation errors would otherwise echo the raw input, token included.
    model_config = ConfigDict(hide_input_in_errors=True)

    api_url: str = Field(
        default=DEFAULT_API_URL,
        description="REST API base URL (GitHub Enterprise Server: https://HOST/api/v3).",
    )
    token: SecretStr | None = Field(
        default=None, description="Token with commit statuses and deployments write access."
    )
    app_id: str | None = Field(
        default=None,
        description="GitHub App client ID or app ID (instead of a token; check runs need an App).",
    )
    private_key: SecretStr | None = Field(default=None, description="GitHub App private key (PEM).")
    installation_id: int | None = Field(
        default=None, description="Installation of the GitHub App on the organization."
    )
    ui_url: str | None = Field(
        default=None,
        description=(
            "Prefect UI base URL people reach from GitHub; check runs and commit statuses "
            "link to flow runs there. Defaults to the Prefect UI URL setting."
        ),
    )

    @field_validator("api_url")
    @classmethod
    def _api_url_is_http(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("api_url must be an http(s) URL, for example https://api.github.com")
        return value

    @field_validator("ui_url")
    @classmethod
    def _ui_url_is_http(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("ui_url must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _exactly_one_auth_mode(self) -> GitHubCredentials:
        for name in ("token", "private_key"):
            secret = getattr(self, name)
            if secret is not None and not secret.get_secret_value().strip():
                raise ValueError(f"{name} is empty")
        app_fields = {
            "app_id": self.app_id,
            "private_key": self.private_key,
            "installation_id": self.installation_id,
        }
        app_given = [name for name, value in app_fields.items() if value is not None]
        if self.token is not None and app_given:
            raise ValueError(
                "give either token or a GitHub App (app_id, private_key, installation_id), not both"
            )
        if self.token is None and not app_given:
            raise ValueError("give a token or a GitHub App (app_id, private_key, installation_id)")
        missing = [name for name, value in app_fields.items() if value is None]
        if app_given and missing:
            raise ValueError(f"GitHub App credentials are incomplete: missing {', '.join(missing)}")
        return self

    @property
    def uses_app(self) -> bool:
        return self.token is None


def github_credentials_from_env(env: Mapping[str, str] | None = None) -> GitHubCredentials | None:
    """Credentials from GANTRY_GITHUB_* variables, or None when none are set.

    Partial or conflicting variables raise ValueError (naming the variables, never their values).
    """
    env = os.environ if env is None else env
    token = env.get(ENV_TOKEN, "").strip()
    app_id = env.get(ENV_APP_ID, "").strip()
    private_key = env.get(ENV_APP_PRIVATE_KEY, "").strip()
    installation = env.get(ENV_APP_INSTALLATION_ID, "").strip()
    if not (token or app_id or private_key or installation):
        return None
    installation_id: int | None = None
    if installation:
        try:
            installation_id = int(installation)
        except ValueError as exc:
            raise ValueError(f"{ENV_APP_INSTALLATION_ID} must be an integer") from exc
    credentials = GitHubCredentials(
        api_url=env.get(ENV_API_URL, "").strip() or DEFAULT_API_URL,
        token=SecretStr(token) if token else None,
        app_id=app_id or None,
        private_key=SecretStr(private_key) if private_key else None,
        installation_id=installation_id,
        ui_url=env.get(ENV_UI_URL) or None,
    )
    # Loaded from the environment is loaded all the same: masked from now on.
    register_model_secrets(credentials)
    return credentials


async def load_github_credentials(
    block_name: str | None = DEFAULT_BLOCK_NAME,
) -> GitHubCredentials | None:
    """The saved block named ``block_name``, else credentials from the environment, else None."""
    block = await load_saved_block(GitHubCredentials, block_name)
    if block is not None:
        return block
    return github_credentials_from_env()
