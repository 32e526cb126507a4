"""Datadog and PagerDuty settings as Prefect Blocks, with environment fallbacks.

Loading either registers its secrets with ``core.redact`` so they never reach a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, HttpUrl, SecretStr, ValidationError, field_validator

from blocks.saved import load_saved_block
from core.redact import register_model_secrets

logger = logging.getLogger("gantry.observability")

DEFAULT_DATADOG_BLOCK = "gantry-datadog"
DEFAULT_PAGERDUTY_BLOCK = "gantry-pagerduty"
DEFAULT_DATADOG_API_URL = "https://api.datadoghq.com"
DEFAULT_PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"

ENV_DD_AGENT_HOST = "DD_AGENT_HOST"
ENV_DD_PORT = "DD_DOGSTATSD_PORT"
ENV_DD_API_KEY = "DD_API_KEY"
ENV_DD_SITE = "DD_SITE"
ENV_DD_API_URL = "GANTRY_DATADOG_API_URL"
ENV_DD_TAGS = "DD_TAGS"
ENV_PD_ROUTING_KEY = "GANTRY_PAGERDUTY_ROUTING_KEY"
ENV_PD_EVENTS_URL = "GANTRY_PAGERDUTY_EVENTS_URL"


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


class PagerDutySettings(Block):
    """The PagerDuty service Gantry pages (Events API v2 integration)."""

    _block_type_name = "Gantry PagerDuty"
    _description = "PagerDuty Events API v2 integration (routing key) Gantry pages through."
    _documentation_url = HttpUrl("https://developer.pagerduty.com/docs/events-api-v2/overview/")

    model_config = ConfigDict(hide_input_in_errors=True)

    routing_key: SecretStr = Field(description="The service integration's 32-character key.")
    events_url: str = Field(
        default=DEFAULT_PAGERDUTY_EVENTS_URL, description="Events API v2 enqueue URL."
    )

    @field_validator("routing_key")
    @classmethod
    def _routing_key_shape(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().strip()) != 32:
            raise ValueError("routing_key must be the integration's 32-character key")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("events_url")
    @classmethod
    def _events_url_is_http(cls, value: str) -> str:
        return _http_url(value, "events_url")


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


def pagerduty_settings_from_env(env: Mapping[str, str] | None = None) -> PagerDutySettings | None:
    """Settings from GANTRY_PAGERDUTY_ROUTING_KEY (and _EVENTS_URL); None when no key is set."""
    env = os.environ if env is None else env
    key = env.get(ENV_PD_ROUTING_KEY, "").strip()
    if not key:
        return None
    try:
        settings = PagerDutySettings(
            routing_key=SecretStr(key),
            events_url=env.get(ENV_PD_EVENTS_URL, "").strip() or DEFAULT_PAGERDUTY_EVENTS_URL,
        )
    except ValidationError as exc:
        # Never str(exc): it would quote the key.
        raise ValueError(
            f"{ENV_PD_ROUTING_KEY}/{ENV_PD_EVENTS_URL} are invalid "
            f"({', '.join(str(e['loc'][0]) for e in exc.errors())})"
        ) from None
    register_model_secrets(settings)
    return settings


async def load_datadog_settings(
    block_name: str | None = DEFAULT_DATADOG_BLOCK,
) -> DatadogSettings | None:
    """The saved block, else settings from the environment, else None (Datadog is off)."""
    block = await load_saved_block(DatadogSettings, block_name)
    return block if block is not None else datadog_settings_from_env()


async def load_pagerduty_settings(
    block_name: str | None = DEFAULT_PAGERDUTY_BLOCK,
) -> PagerDutySettings | None:
    """The saved block, else settings from the environment, else None (no paging)."""
    block = await load_saved_block(PagerDutySettings, block_name)
    return block if block is not None else pagerduty_settings_from_env()
