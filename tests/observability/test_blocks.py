"""Datadog and PagerDuty settings blocks: validation, environment fallbacks, secrets kept hidden."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from blocks.observability import (
    DEFAULT_DATADOG_API_URL,
    DEFAULT_PAGERDUTY_EVENTS_URL,
    DatadogSettings,
    PagerDutySettings,
    datadog_settings_from_env,
    load_datadog_settings,
    load_pagerduty_settings,
    pagerduty_settings_from_env,
)
from core.redact import MASK, redact

DD_KEY = "0123456789abcdef0123456789abcdef"
ROUTING_KEY = "R0123456789ABCDEF0123456789ABCDE"


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


def test_secrets_never_show_in_reprs_or_validation_errors() -> None:
    settings = DatadogSettings(api_key=SecretStr(DD_KEY))
    assert DD_KEY not in repr(settings) and DD_KEY not in str(settings)
    with pytest.raises(ValidationError) as caught:
        PagerDutySettings(routing_key=SecretStr("short-key-value"))
    assert "short-key-value" not in str(caught.value)
    assert "32-character" in str(caught.value)


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


def test_pagerduty_from_the_environment_registers_the_routing_key() -> None:
    settings = pagerduty_settings_from_env({"GANTRY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY})
    assert settings is not None
    assert settings.events_url == DEFAULT_PAGERDUTY_EVENTS_URL
    assert settings.routing_key.get_secret_value() == ROUTING_KEY
    assert ROUTING_KEY not in redact(f'{{"routing": "{ROUTING_KEY}"}}')


def test_pagerduty_bad_environment_names_the_variables_not_the_key() -> None:
    with pytest.raises(ValueError, match="GANTRY_PAGERDUTY_ROUTING_KEY") as caught:
        pagerduty_settings_from_env({"GANTRY_PAGERDUTY_ROUTING_KEY": "too-short-key"})
    assert "too-short-key" not in str(caught.value)


def test_pagerduty_from_an_empty_environment_is_none() -> None:
    assert pagerduty_settings_from_env({}) is None


@pytest.mark.anyio
async def test_without_a_prefect_api_loading_falls_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("DD_AGENT_HOST", "127.0.0.1")
    monkeypatch.setenv("GANTRY_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    datadog = await load_datadog_settings()
    pagerduty = await load_pagerduty_settings()
    assert datadog is not None and datadog.agent_host == "127.0.0.1"
    assert pagerduty is not None and pagerduty.routing_key.get_secret_value() == ROUTING_KEY
