"""Datadog settings as a Prefect Block, with environment fallbacks.

Paging is Datadog's (its monitors route to PagerDuty), so Gantry holds no PagerDuty credential.
Loading the settings registers their secrets with ``core.redact`` so they never reach a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, HttpUrl, SecretStr, field_validator

from blocks.saved import load_saved_block
from core.redact import register_model_secrets

logger = logging.getLogger("gantry.observability")

DEFAULT_DATADOG_BLOCK = "gantry-datadog"
DEFAULT_DATADOG_API_URL = "https://api.datadoghq.com"

ENV_DD_AGENT_HOST = "DD_AGENT_HOST"
ENV_DD_PORT = "DD_DOGSTATSD_PORT"
ENV_DD_API_KEY = "DD_API_KEY"
ENV_DD_SITE = "DD_SITE"
ENV_DD_API_URL = "GANTRY_DATADOG_API_URL"
ENV_DD_TAGS = "DD_TAGS"


def _http_url(value: str, field: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"{field} must be an http(s) URL")
    return value


class DatadogSettings(Block):
    """Where Gantry's metrics and deployment events go."""

    _block_type_name = "Gantry Datadog"
    _description = (
        "Datadog agent (DogStatsD) for Gantry's metrics, and optionally an API key for "
        "deployment events and DORA metrics."
    )
    _documentation_url = HttpUrl("https://docs.datadoghq.com/api/latest/")

    model_config = ConfigDict(hide_input_in_errors=True)

    agent_host: str | None = Field(
        default=None, description="DogStatsD host (the agent); empty turns metrics off."
    )
    agent_port: int = Field(default=8125, ge=1, le=65535, description="DogStatsD UDP port.")
    api_key: SecretStr | None = Field(
        default=None, description="API key for events and DORA metrics; empty sends none."
    )
    api_url: str = Field(
        default=DEFAULT_DATADOG_API_URL,
        description="API base URL of your Datadog site (e.g. https://api.datadoghq.eu).",
    )
    tags: list[str] = Field(default_factory=list, description="Tags added to every metric.")

    @field_validator("api_url")
    @classmethod
    def _api_url_is_http(cls, value: str) -> str:
        return _http_url(value, "api_url")

    @field_validator("api_key")
    @classmethod
    def _api_key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        return value


def datadog_settings_from_env(env: Mapping[str, str] | None = None) -> DatadogSettings | None:
    """Settings from DD_AGENT_HOST, DD_DOGSTATSD_PORT, DD_API_KEY, DD_SITE or
    GANTRY_DATADOG_API_URL and DD_TAGS; None when neither an agent nor an API key is set."""
    env = os.environ if env is None else env
    host = env.get(ENV_DD_AGENT_HOST, "").strip()
    port = env.get(ENV_DD_PORT, "").strip()
    api_key = env.get(ENV_DD_API_KEY, "").strip()
    if not (host or port or api_key):
        return None
    site = env.get(ENV_DD_SITE, "").strip()
    api_url = env.get(ENV_DD_API_URL, "").strip() or (
        f"https://api.{site}" if site else DEFAULT_DATADOG_API_URL
    )
    try:
        agent_port = int(port) if port else 8125
    except ValueError as exc:
        raise ValueError(f"{ENV_DD_PORT} must be a port number") from exc
    tags = [t for t in env.get(ENV_DD_TAGS, "").replace(",", " ").split() if t]
    settings = DatadogSettings(
        agent_host=host or ("127.0.0.1" if port else None),
        agent_port=agent_port,
        api_key=SecretStr(api_key) if api_key else None,
        api_url=api_url,
        tags=tags,
    )
    register_model_secrets(settings)
    return settings


async def load_datadog_settings(
    block_name: str | None = DEFAULT_DATADOG_BLOCK,
) -> DatadogSettings | None:
    """The saved block, else settings from the environment, else None (Datadog is off)."""
    block = await load_saved_block(DatadogSettings, block_name)
    return block if block is not None else datadog_settings_from_env()
