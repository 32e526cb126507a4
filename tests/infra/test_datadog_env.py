"""The receiver, its dispatcher and the worker send DogStatsD to the node's Datadog agent with the
environment as their ``env`` tag: ``DD_AGENT_HOST`` (the node's IP), ``DD_DOGSTATSD_PORT`` and
``DD_ENV``, read from what the infrastructure code really produces (the rendered overlays, the
Terraform that makes the receiver's ConfigMap and the worker's Helm values)."""

from __future__ import annotations

from typing import Any

import hcl2
import pytest

from .test_kubernetes import KUBECTL, NO_KUBECTL, find
from .tools import ENVIRONMENTS, MODULES_DIR, load_hcl, resources, unquote

NODE_IP = {"fieldRef": {"fieldPath": "status.hostIP"}}
ENVIRONMENT = "${var.environment}"


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """{name: value or valueFrom} of a container's env entries, quotes taken off."""
    found: dict[str, Any] = {}
    for item in container.get("env") or []:
        value = item.get("valueFrom", item.get("value"))
        found[unquote(item["name"])] = value if isinstance(value, dict) else unquote(value)
    return found


def unquoted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: unquoted(each) for key, each in value.items()}
    return unquote(value)


@pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)
@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_receiver_and_dispatcher_send_to_the_nodes_agent_with_the_configmaps_env(
    overlay: str,
) -> None:
    deployment = find(overlay, "Deployment", "gantry-receiver")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert {"receiver", "dispatcher"} <= set(containers)
    for name in ("receiver", "dispatcher"):
        env = env_of(containers[name])
        assert env["DD_AGENT_HOST"] == NODE_IP, name
        assert env["DD_DOGSTATSD_PORT"] == "8125", name
        # DD_ENV comes from the ConfigMap Terraform writes (below), not from the overlay.
        sources = [each.get("configMapRef", {}).get("name") for each in containers[name]["envFrom"]]
        assert "gantry-receiver" in sources, name
        assert "DD_ENV" not in env, f"{name}: a literal DD_ENV would hide the ConfigMap's"


def test_the_receivers_configmap_sets_dd_env_to_the_environment() -> None:
    config_maps: dict[str, Any] = resources(
        load_hcl(MODULES_DIR / "prefect"), "kubernetes_config_map_v1"
    )
    (receiver,) = [
        body
        for body in config_maps.values()
        if unquote(body["metadata"][0]["name"]) == "gantry-receiver"
    ]
    assert receiver["data"]["DD_ENV"] == ENVIRONMENT


def test_the_worker_pod_sends_to_the_nodes_agent_with_the_environment_as_env() -> None:
    worker: Any = resources(load_hcl(MODULES_DIR / "prefect"), "helm_release")["worker"]
    (values,) = worker["values"]
    assert isinstance(values, str)
    # The Helm values are one yamlencode(...) expression: parse its object as HCL.
    prefix, suffix = "${yamlencode(", ")}"
    assert values.startswith(prefix) and values.endswith(suffix)
    chart = hcl2.loads(f"v = {values[len(prefix) : -len(suffix)]}\n")["v"]
    env = {
        unquote(e["name"]): unquoted(e.get("valueFrom", e.get("value")))
        for e in chart["worker"]["extraEnvVars"]
    }
    assert env["DD_AGENT_HOST"] == NODE_IP
    assert env["DD_DOGSTATSD_PORT"] == "8125"
    assert env["DD_ENV"] == ENVIRONMENT
