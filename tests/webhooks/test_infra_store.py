"""In Kubernetes the receiver's replicas share the database module's PostgreSQL as their
delivery store: Terraform writes its URL into the receiver's Secret and the replica count into
its ConfigMap, and the Deployment reads both (with several replicas, the receiver refuses a
SQLite store, tested in test_server_limits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def unquoted(block: Any) -> dict[str, Any]:
    if isinstance(block, list):
        block = block[0]
    return {str(key).strip('"'): value for key, value in block.items()}


def prefect_module_resource(kind: str, name: str) -> dict[str, Any]:
    with (INFRA / "terraform" / "modules" / "prefect" / "main.tf").open() as handle:
        parsed = hcl2.load(handle)
    for block in parsed["resource"]:
        # Newer python-hcl2 keeps the labels' quotes.
        for label, resources in unquoted(block).items():
            if label == kind and name in unquoted(resources):
                return unquoted(unquoted(resources)[name])
    raise AssertionError(f"no resource {kind}.{name}")


def test_terraform_puts_the_database_modules_postgresql_url_in_the_receivers_secret() -> None:
    secret = prefect_module_resource("kubernetes_secret_v1", "webhook")
    data = unquoted(secret["data"])
    url = str(data["GANTRY_WEBHOOK_STORE"])
    assert "postgresql://" in url
    for part in ("var.database_host", "var.database_port", "var.database_name"):
        assert part in url
    # The password comes from the database's secret, URL-encoded, never a literal.
    assert "urlencode(local.database.password)" in url


def test_terraform_tells_the_receiver_it_runs_with_several_replicas() -> None:
    config = prefect_module_resource("kubernetes_config_map_v1", "receiver")
    data = unquoted(config["data"])
    assert "var.receiver_max_replicas" in str(data["GANTRY_WEBHOOK_REPLICAS"])
    assert "GANTRY_WEBHOOK_STORE" not in data  # a password: Secret only


def test_the_receiver_deployment_reads_its_store_from_the_secret_and_drains() -> None:
    deployment = yaml.safe_load((INFRA / "k8s" / "base" / "receiver-deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    containers = {container["name"]: container for container in pod["containers"]}
    assert set(containers) == {"receiver", "dispatcher"}
    for container in containers.values():
        env = {item["name"]: item for item in container["env"]}
        assert env["GANTRY_WEBHOOK_STORE"]["valueFrom"]["secretKeyRef"] == {
            "name": "gantry-webhook",
            "key": "GANTRY_WEBHOOK_STORE",
        }
    # The receiver leaves dispatching to the dispatcher container, which holds no secret of
    # GitHub's.
    receiver_env = {item["name"]: item for item in containers["receiver"]["env"]}
    assert receiver_env["GANTRY_WEBHOOK_DISPATCHER"]["value"] == "process"
    assert containers["dispatcher"]["command"][-1] == "webhooks.dispatch_process"
    assert "GANTRY_WEBHOOK_SECRET" not in {item["name"] for item in containers["dispatcher"]["env"]}
    # Longer than the receiver's drain (20 s), so requests in flight are answered.
    assert pod["terminationGracePeriodSeconds"] > 20
