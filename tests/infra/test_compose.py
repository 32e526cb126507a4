"""The development environment (infra/compose): valid against the Compose Specification's schema
(vendored from compose-spec, schema/compose-spec.json), and the spec's parts with health checks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from .tools import INFRA

COMPOSE_FILE = INFRA / "compose" / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
REQUIRED_SERVICES = {"postgres", "prefect-server", "worker", "webhook-receiver", "registry"}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    errors = sorted(validator().iter_errors(compose()), key=lambda error: error.json_path)
    assert not errors, "\n".join(f"{error.json_path}: {error.message}" for error in errors)


def test_schema_rejects_a_misspelt_service_key() -> None:
    broken = compose()
    broken["services"]["worker"]["helthcheck"] = broken["services"]["worker"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError):
        validator().validate(broken)


def test_every_part_of_the_development_environment_is_there_with_a_health_check() -> None:
    services = compose()["services"]
    assert set(services) >= REQUIRED_SERVICES
    for name in REQUIRED_SERVICES:
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"


def test_prefect_server_runs_on_postgresql_once_it_is_healthy() -> None:
    server = compose()["services"]["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_receiver_and_worker_run_gantrys_image_and_talk_to_the_server() -> None:
    services = compose()["services"]
    for name in ("worker", "webhook-receiver"):
        service = services[name]
        assert service["build"]["dockerfile"] == "infra/docker/Dockerfile"
        assert service["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert service["read_only"] is True
    assert services["webhook-receiver"]["command"] == ["gantry", "webhooks", "serve"]
    assert services["webhook-receiver"]["healthcheck"]["test"][-1].count("/readyz") == 1
    # Gantry's worker (Prefect's plus the heartbeat metric), with Prefect's health check on.
    command = services["worker"]["command"]
    assert command[:3] == ["python", "-m", "deployments.worker"]
    assert "--with-healthcheck" in command


def test_the_prefect_api_requires_the_credential_its_clients_send() -> None:
    services = compose()["services"]
    given = "${PREFECT_API_AUTH_STRING:?set PREFECT_API_AUTH_STRING to user:password}"
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == given
    for name in ("worker", "webhook-receiver"):
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"] == given, name


def test_published_ports_listen_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_secrets_come_from_the_environment_never_from_the_file() -> None:
    text = COMPOSE_FILE.read_text()
    assignments = re.finditer(
        r"^\s*\w*(PASSWORD|SECRET|API_KEY|TOKEN)\w*:\s*(\S+)", text, re.MULTILINE
    )
    found = 0
    for match in assignments:
        found += 1
        assert match.group(2).startswith("${"), match.group(0)
    assert found >= 3, "expected the database password, the webhook secret, the Datadog key"


def test_metrics_reach_an_opt_in_datadog_agent() -> None:
    services = compose()["services"]
    agent = services["datadog-agent"]
    assert agent["profiles"] == ["datadog"], "the agent runs only when asked for"
    assert agent["environment"]["DD_DOGSTATSD_NON_LOCAL_TRAFFIC"] == "true"
    assert agent["healthcheck"]["test"] == ["CMD", "agent", "health"]
    assert "ports" not in agent, "DogStatsD stays on the Compose network"
    for name in ("worker", "webhook-receiver"):
        # Empty unless exported: with no agent host, Gantry's metrics are off.
        assert services[name]["environment"]["DD_AGENT_HOST"] == "${DD_AGENT_HOST:-}"
