"""The Datadog settings block: validation, environment fallbacks, secrets kept hidden."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from blocks.observability import (
    DEFAULT_DATADOG_API_URL,
    DatadogSettings,
    datadog_settings_from_env,
    load_datadog_settings,
)
from core.redact import MASK, redact

DD_KEY = "0123456789abcdef0123456789abcdef"


def test_datadog_defaults_are_metrics_off_and_the_us_site() -> None:
    settings = DatadogSettings()
    assert settings.agent_host is None
    assert settings.agent_port == 8125
    assert settings.api_key is None
    assert settings.api_url == DEFAULT_DATADOG_API_URL


def test_datadog_refuses_a_non_http_api_url() -> None:
    with pytest.raises(ValidationError, match="http"):
        DatadogSettings(api_url="api.datadoghq.com")


def test_a_blank_api_key_means_no_api_key() -> None:
    assert DatadogSettings(api_key=SecretStr("  ")).api_key is None


def test_the_api_key_never_shows_in_reprs() -> None:
    settings = DatadogSettings(api_key=SecretStr(DD_KEY))
    assert DD_KEY not in repr(settings) and DD_KEY not in str(settings)


def test_datadog_from_the_environment_registers_the_key_as_a_secret() -> None:
    settings = datadog_settings_from_env(
        {
            "DD_AGENT_HOST": "10.0.0.7",
            "DD_DOGSTATSD_PORT": "8126",
            "DD_API_KEY": DD_KEY,
            "DD_SITE": "datadoghq.eu",
            "DD_TAGS": "team:platform, env:prod",
        }
    )
    assert settings is not None
    assert (settings.agent_host, settings.agent_port) == ("10.0.0.7", 8126)
    assert settings.api_url == "https://api.datadoghq.eu"
    assert settings.tags == ["team:platform", "env:prod"]
    assert redact(f"key {DD_KEY}") == f"key {MASK}"


def test_datadog_from_an_empty_environment_is_none() -> None:
    assert datadog_settings_from_env({}) is None


def test_datadog_port_alone_means_a_local_agent() -> None:
    settings = datadog_settings_from_env({"DD_DOGSTATSD_PORT": "9125"})
    assert settings is not None and settings.agent_host == "127.0.0.1"


def test_datadog_bad_port_names_the_variable() -> None:
    with pytest.raises(ValueError, match="DD_DOGSTATSD_PORT"):
        datadog_settings_from_env({"DD_DOGSTATSD_PORT": "x"})


@pytest.mark.anyio
async def test_without_a_prefect_api_loading_falls_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
    datadog = await load_datadog_settings()
    assert datadog is not None and datadog.agent_host == "127.0.0.1"
