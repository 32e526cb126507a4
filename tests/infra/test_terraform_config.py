"""What matters in the Terraform, pinned by parsing it (python-hcl2).

The spec's three alert examples, production's database guarantees, the separation of staging and
production, and the hygiene every module owes its readers: typed, described variables, described
outputs, pinned providers, no secret in the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .tools import (
    AWS_ONLY_MODULES,
    COMPONENT_MODULES,
    ENVIRONMENTS,
    ENVS_DIR,
    MODULES_DIR,
    PARSED_ONLY_MODULES,
    REPO,
    Block,
    labelled,
    load_hcl,
    resources,
    unquote,
)

ALL_MODULES = AWS_ONLY_MODULES + PARSED_ONLY_MODULES
ALL_ROOTS = [MODULES_DIR / name for name in ALL_MODULES] + [ENVS_DIR / env for env in ENVIRONMENTS]


def _root_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _monitors() -> dict[str, Block]:
    return resources(load_hcl(MODULES_DIR / "monitoring"), "datadog_monitor")


def _text(body: Block, key: str) -> str:
    return str(unquote(body[key]))


def _critical(monitor: Block) -> object:
    thresholds = monitor["monitor_thresholds"]
    assert isinstance(thresholds, list)
    return thresholds[0]["critical"]


def _module_args(env: str) -> dict[str, Block]:
    return labelled(load_hcl(ENVS_DIR / env).get("module", []))


def _env_values(env: str) -> Block:
    """What envs/<env> passes to modules/environment: its own sizes, names and thresholds."""
    return _module_args(env)["environment"]


def _components() -> dict[str, Block]:
    """modules/environment's calls of the component modules, by name."""
    return labelled(load_hcl(MODULES_DIR / "environment")["module"])


def _backend(env: str) -> Block:
    (terraform,) = load_hcl(ENVS_DIR / env)["terraform"]
    backends = terraform["backend"]
    assert isinstance(backends, list)
    ((kind, settings),) = backends[0].items()
    assert unquote(kind) == "s3"
    return {key: unquote(value) for key, value in settings.items()}


# The spec's alert examples -------------------------------------------------------------------


def test_p1_alert_fires_when_api_error_rate_exceeds_5_percent_for_5_minutes() -> None:
    monitor = _monitors()["api_error_rate"]
    query = _text(monitor, "query")
    assert query.startswith("sum(last_5m):")
    assert "trace.http.request.errors" in query and "trace.http.request.hits" in query
    assert query.endswith("* 100 > 5")
    assert _critical(monitor) == 5
    assert _text(monitor, "priority") == "1"


def test_p2_alert_fires_when_average_llm_latency_exceeds_3_seconds_for_10_minutes() -> None:
    monitor = _monitors()["llm_latency"]
    query = _text(monitor, "query")
    assert query.startswith("avg(last_10m):avg:${var.llm_latency_metric}")
    assert query.endswith("> 3")
    assert _critical(monitor) == 3
    assert _text(monitor, "priority") == "2"
    variables = labelled(load_hcl(MODULES_DIR / "monitoring")["variable"])
    assert "seconds" in _text(variables["llm_latency_metric"], "description")


def test_p3_alert_fires_when_database_cpu_exceeds_80_percent() -> None:
    monitor = _monitors()["database_cpu"]
    query = _text(monitor, "query")
    assert ":avg:aws.rds.cpuutilization{" in query
    assert query.endswith("> 80")
    assert _critical(monitor) == 80
    assert _text(monitor, "priority") == "3"


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("webhook_backlog", "gantry.webhook.backlog"),
        ("pipeline_failure_rate", "gantry.pipeline.runs"),
        ("release_failed", "gantry.release.outcome"),
        ("worker_not_polling", "gantry.worker.heartbeat"),
    ],
)
def test_gantry_monitor_watches_its_own_metric(name: str, metric: str) -> None:
    assert f":{metric}{{" in _text(_monitors()[name], "query")


def test_release_monitor_counts_failed_and_rolled_back_releases() -> None:
    query = _text(_monitors()["release_failed"], "query")
    assert "outcome:failed" in query and "outcome:rolled_back" in query


def test_worker_monitor_alerts_on_silence() -> None:
    monitor = _monitors()["worker_not_polling"]
    assert monitor["notify_no_data"] is True


# Routing and runbooks ---------------------------------------------------------------------------


def test_each_monitor_routes_by_its_priority() -> None:
    for name, monitor in _monitors().items():
        priority = _text(monitor, "priority")
        message = _text(monitor, "message")
        assert f"[P{priority}]" in _text(monitor, "name"), name
        assert f"${{local.recipients[{priority}]}}" in message, name


def test_p1_pages_on_call_and_p3_only_notifies() -> None:
    monitoring = load_hcl(MODULES_DIR / "monitoring")
    (locals_block,) = [block for block in monitoring["locals"] if "recipients" in block]
    recipients = locals_block["recipients"]
    assert isinstance(recipients, dict)
    assert "@pagerduty-${local.pagerduty_services.p1.name}" in str(recipients["1"])
    assert "pagerduty" not in str(recipients["3"])
    (services,) = [
        block["pagerduty_services"]
        for block in monitoring["locals"]
        if "pagerduty_services" in block
    ]
    assert isinstance(services, dict)
    assert unquote(services["p1"]["urgency"]) == "high"
    assert unquote(services["p2"]["urgency"]) == "low"


def test_staging_never_pages_and_production_does() -> None:
    assert _env_values("staging")["page_on_call"] is False
    assert _env_values("production")["page_on_call"] is True
    assert unquote(_components()["monitoring"]["page_on_call"]) == "${var.page_on_call}"


def test_every_monitor_links_a_runbook_that_exists() -> None:
    runbooks = REPO / "docs" / "runbooks"
    for name, monitor in _monitors().items():
        links = re.findall(r"\$\{var\.runbook_base_url\}/([\w-]+\.md)", _text(monitor, "message"))
        assert len(links) == 1, f"{name} links no runbook"
        assert (runbooks / links[0]).is_file(), f"{name}: docs/runbooks/{links[0]} is missing"


# Production database, separation of environments -------------------------------------------------


def test_production_database_is_multi_az_deletion_protected_and_backed_up() -> None:
    database = _env_values("production")["database"]
    assert database["multi_az"] is True
    assert database["deletion_protection"] is True
    assert database["backup_retention_days"] >= 7
    component = _components()["database"]
    for name in ("multi_az", "deletion_protection", "backup_retention_days"):
        assert unquote(component[name]) == f"${{var.database.{name}}}", name
    assert unquote(component["environment"]) == "${var.environment}"
    assert unquote(_env_values("production")["environment"]) == "${local.environment}"
    (locals_block,) = load_hcl(ENVS_DIR / "production")["locals"]
    assert unquote(locals_block["environment"]) == "production"


def test_database_module_always_encrypts_and_keeps_databases_private() -> None:
    instance = resources(load_hcl(MODULES_DIR / "database"), "aws_db_instance")["this"]
    assert instance["storage_encrypted"] is True
    assert instance["publicly_accessible"] is False
    assert instance["manage_master_user_password"] is True
    assert "password" not in instance


def test_database_module_refuses_a_production_database_without_ha_or_protection() -> None:
    variables = labelled(load_hcl(MODULES_DIR / "database")["variable"])
    for name in ("multi_az", "deletion_protection"):
        (validation,) = variables[name]["validation"]
        condition = str(unquote(validation["condition"]))
        assert 'var.environment != "production"' in condition
        assert f"var.{name}" in condition


def test_staging_and_production_never_share_state() -> None:
    staging, production = _backend("staging"), _backend("production")
    for key in ("bucket", "key", "dynamodb_table"):
        assert staging[key] != production[key], key
    for backend in (staging, production):
        assert backend["encrypt"] is True
        assert backend["dynamodb_table"]


def test_staging_and_production_never_share_a_database_or_network() -> None:
    (module_locals,) = load_hcl(MODULES_DIR / "environment")["locals"]
    assert unquote(module_locals["name"]) == "gantry-${var.environment}"
    components = _components()
    database = components["database"]
    assert unquote(database["name"]) == "${local.name}"
    assert unquote(database["private_subnet_ids"]) == "${module.network.private_subnet_ids}"
    assert unquote(components["network"]["cidr_block"]) == "${var.network.cidr_block}"
    names = {}
    for env in ENVIRONMENTS:
        (locals_block,) = load_hcl(ENVS_DIR / env)["locals"]
        assert unquote(locals_block["environment"]) == env
        assert unquote(_env_values(env)["environment"]) == "${local.environment}"
        names[env] = unquote(_env_values(env)["network"]["cidr_block"])
    assert names["staging"] != names["production"]


def test_production_is_sized_for_high_availability() -> None:
    production = _env_values("production")
    assert production["network"]["single_nat_gateway"] is False
    assert production["prefect"]["server_replicas"] >= 2
    node_groups = production["node_groups"]
    assert isinstance(node_groups, dict)
    assert all(group["min_size"] >= 1 for group in node_groups.values())
    assert node_groups["general"]["min_size"] >= 3
    network, prefect, cluster = (_components()[name] for name in ("network", "prefect", "cluster"))
    assert unquote(network["single_nat_gateway"]) == "${var.network.single_nat_gateway}"
    assert unquote(prefect["server_replicas"]) == "${var.prefect.server_replicas}"
    assert unquote(cluster["node_groups"]) == "${var.node_groups}"


def test_each_environment_composes_the_components_once_through_one_module() -> None:
    assert set(_components()) == set(COMPONENT_MODULES)
    for env in ENVIRONMENTS:
        (call,) = load_hcl(ENVS_DIR / env)["module"]
        assert set(call) == {'"environment"'}
        assert unquote(_env_values(env)["source"]) == "../../modules/environment"


@pytest.mark.parametrize("module", ALL_MODULES)
def test_modules_configure_no_provider_or_backend(module: str) -> None:
    config = load_hcl(MODULES_DIR / module)
    assert "provider" not in config
    for terraform in config.get("terraform", []):
        assert "backend" not in terraform


def test_prefect_module_uses_the_official_charts_on_external_postgresql() -> None:
    releases = resources(load_hcl(MODULES_DIR / "prefect"), "helm_release")
    assert {unquote(release["chart"]) for release in releases.values()} == {
        "prefect-server",
        "prefect-worker",
    }
    for release in releases.values():
        assert unquote(release["repository"]) == "${var.chart_repository}"
        assert unquote(release["version"]) == "${var.chart_version}"
    server_values = str(releases["server"]["values"])
    assert "postgresql = {enabled = false}" in server_values.replace('"', "")


def test_prefect_api_requires_a_credential_from_a_kubernetes_secret() -> None:
    """Server and worker read it from one Secret (the charts' basicAuth); no value is in code."""
    module = load_hcl(MODULES_DIR / "prefect")
    secret = resources(module, "kubernetes_secret_v1")["prefect_auth"]
    metadata, data = secret["metadata"], secret["data"]
    assert isinstance(metadata, list) and isinstance(data, dict)
    assert unquote(metadata[0]["name"]) == "prefect-api-auth"  # what infra/k8s's receiver reads
    auth = str(unquote(data["auth-string"]))
    user, colon, password = auth.partition(":")
    assert user and colon and password == "${random_password.prefect_api.result}"
    generated = resources(module, "random_password")["prefect_api"]
    assert int(unquote(generated["length"])) >= 32
    releases = resources(module, "helm_release")
    reference = "existingSecret = kubernetes_secret_v1.prefect_auth.metadata[0].name"
    for name in ("server", "worker"):
        values = str(releases[name]["values"]).replace('"', "")
        assert f"basicAuth = {{enabled = true, {reference}}}" in values, name
        assert "AUTH_STRING" not in values, f"{name}: the credential only from the Secret"


# Hygiene ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ALL_ROOTS, ids=_root_id)
def test_variables_are_typed_and_described(root: Path) -> None:
    for name, body in labelled(load_hcl(root).get("variable", [])).items():
        assert "type" in body, f"{name} has no type"
        assert str(unquote(body.get("description", ""))).strip(), f"{name} has no description"


@pytest.mark.parametrize("root", ALL_ROOTS, ids=_root_id)
def test_outputs_are_documented(root: Path) -> None:
    outputs = labelled(load_hcl(root).get("output", []))
    assert outputs, "no outputs"
    for name, body in outputs.items():
        assert str(unquote(body.get("description", ""))).strip(), f"{name} has no description"


@pytest.mark.parametrize("root", ALL_ROOTS, ids=_root_id)
def test_provider_versions_are_pinned(root: Path) -> None:
    (terraform,) = load_hcl(root)["terraform"]
    (providers,) = terraform["required_providers"]
    pinned = {
        name: unquote(spec["version"]) for name, spec in providers.items() if isinstance(spec, dict)
    }
    assert pinned
    for name, version in pinned.items():
        assert re.fullmatch(r"(~> )?\d+\.\d+\.\d+", str(version)), f"{name}: {version}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_secrets_come_only_from_sensitive_variables(env: str) -> None:
    variables = labelled(load_hcl(ENVS_DIR / env)["variable"])
    secret_like = {name for name in variables if re.search(r"key|token|password|secret$", name)}
    assert secret_like == {"datadog_api_key", "datadog_app_key", "pagerduty_token"}
    for name in secret_like:
        assert variables[name].get("sensitive") is True, name
        assert "default" not in variables[name], name


def test_no_literal_credential_in_any_terraform_file() -> None:
    pattern = re.compile(
        r'(password|secret|token|api_key|app_key)\s*=\s*"(?!\$\{)[^"]+"', re.IGNORECASE
    )
    for path in (REPO / "infra" / "terraform").rglob("*.tf"):
        for line in path.read_text().splitlines():
            assert not pattern.search(line), f"{path}: {line.strip()}"
