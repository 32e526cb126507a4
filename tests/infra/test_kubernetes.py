"""Gantry's own Kubernetes manifests: each overlay rendered with kustomize and validated offline
against the Kubernetes API schemas, then the properties that matter pinned."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .tools import ENVIRONMENTS, find_kubectl, render_overlay

KUBECTL, NO_KUBECTL = find_kubectl()
pytestmark = pytest.mark.skipif(KUBECTL is None, reason=NO_KUBECTL)

KUBERNETES_VERSION = "1.32.0"
TARGET_NAMESPACES = {"staging", "production"}
STEPS = "gantry-steps"
# Addresses no step may reach: cloud metadata, the API server's default Service address, a
# typical pod address (the Prefect server's), loopback.
FORBIDDEN_ADDRESSES = ("169.254.169.254", "10.96.0.1", "10.244.1.7", "172.20.0.10", "127.0.0.1")

Manifest = dict[str, Any]


@cache
def rendered(overlay: str) -> tuple[Manifest, ...]:
    assert KUBECTL is not None
    return tuple(doc for doc in yaml.safe_load_all(render_overlay(KUBECTL, overlay)) if doc)


def find(overlay: str, kind: str, name: str) -> Manifest:
    matches = [
        doc for doc in rendered(overlay) if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"{overlay}: expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def of_kind(overlay: str, kind: str) -> Iterator[Manifest]:
    return (doc for doc in rendered(overlay) if doc["kind"] == kind)


def receiver_container(overlay: str) -> Manifest:
    deployment = find(overlay, "Deployment", "gantry-receiver")
    # The pod also runs the dispatcher container (webhooks.dispatch_process).
    (container,) = [
        each
        for each in deployment["spec"]["template"]["spec"]["containers"]
        if each["name"] == "receiver"
    ]
    assert isinstance(container, dict)
    return container


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(overlay: str) -> None:
    documents = rendered(overlay)
    assert len(documents) >= 10
    for document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{document['kind']}/{document['metadata']['name']}"
            pytest.fail(f"{overlay}: {name} is invalid: {exc.message}")


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_receiver_is_probed_on_healthz_and_readyz(overlay: str) -> None:
    container = receiver_container(overlay)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 8787


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_receiver_runs_non_root_on_a_read_only_filesystem_with_limits(overlay: str) -> None:
    container = receiver_container(overlay)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_receiver_image_is_pinned_by_digest(overlay: str) -> None:
    assert "@sha256:" in receiver_container(overlay)["image"]


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_receiver_secret_comes_from_a_kubernetes_secret(overlay: str) -> None:
    env = {item["name"]: item for item in receiver_container(overlay)["env"]}
    secret = env["GANTRY_WEBHOOK_SECRET"]
    assert "value" not in secret
    assert secret["valueFrom"]["secretKeyRef"]["name"] == "gantry-webhook"


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_receiver_reaches_prefect_with_the_credential_from_the_servers_secret(
    overlay: str,
) -> None:
    env = {item["name"]: item for item in receiver_container(overlay)["env"]}
    auth = env["PREFECT_API_AUTH_STRING"]
    assert "value" not in auth
    # The Secret and key the prefect Terraform module writes and the Prefect charts read.
    assert auth["valueFrom"]["secretKeyRef"] == {"name": "prefect-api-auth", "key": "auth-string"}


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_receiver_is_exposed_autoscaled_and_disruption_protected(overlay: str) -> None:
    service = find(overlay, "Service", "gantry-receiver")
    ingress = find(overlay, "Ingress", "gantry-receiver")
    hpa = find(overlay, "HorizontalPodAutoscaler", "gantry-receiver")
    pdb = find(overlay, "PodDisruptionBudget", "gantry-receiver")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/webhooks/github"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gantry-receiver"
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_production_receiver_keeps_more_replicas_than_staging() -> None:
    def minimum(overlay: str) -> int:
        hpa = find(overlay, "HorizontalPodAutoscaler", "gantry-receiver")
        return int(hpa["spec"]["minReplicas"])

    assert minimum("production") > minimum("staging")
    assert find("production", "PodDisruptionBudget", "gantry-receiver")["spec"]["minAvailable"] >= 2


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_deployer_may_act_only_in_staging_production_and_the_steps_namespace(overlay: str) -> None:
    assert not list(of_kind(overlay, "ClusterRole"))
    assert not list(of_kind(overlay, "ClusterRoleBinding"))
    bindings = [
        doc
        for doc in of_kind(overlay, "RoleBinding")
        if any(subject["name"] == "gantry-deployer" for subject in doc["subjects"])
    ]
    assert {doc["metadata"]["namespace"] for doc in bindings} == TARGET_NAMESPACES | {STEPS}


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_deployer_role_cannot_read_secrets_delete_or_escalate(overlay: str) -> None:
    roles = [
        doc for doc in of_kind(overlay, "Role") if doc["metadata"]["name"] == "gantry-deployer"
    ]
    assert {doc["metadata"]["namespace"] for doc in roles} == TARGET_NAMESPACES
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]
            assert "delete" not in rule["verbs"]
            assert "secrets" not in rule["resources"]
            assert not {"roles", "rolebindings"} & set(rule["resources"])
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]


def steps_policies(overlay: str) -> list[Manifest]:
    return [
        doc for doc in of_kind(overlay, "NetworkPolicy") if doc["metadata"]["namespace"] == STEPS
    ]


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_the_steps_namespace_enforces_restricted_pod_security(overlay: str) -> None:
    labels = find(overlay, "Namespace", STEPS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    quota = find(overlay, "ResourceQuota", STEPS)["spec"]["hard"]
    assert {"pods", "limits.cpu", "limits.memory"} <= set(quota)
    assert quota["services"] == "0" and quota["secrets"] == "0"
    (limits,) = find(overlay, "LimitRange", STEPS)["spec"]["limits"]
    assert {"cpu", "memory"} <= set(limits["default"]) and {"cpu", "memory"} <= set(limits["max"])


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_step_runner_may_only_run_pods_and_read_their_logs_in_the_steps_namespace(
    overlay: str,
) -> None:
    role = find(overlay, "Role", "gantry-step-runner")
    assert role["metadata"]["namespace"] == STEPS
    granted = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        *(("pods", verb) for verb in ("create", "get", "list", "watch", "delete")),
        ("pods/log", "get"),
    }
    binding = find(overlay, "RoleBinding", "gantry-step-runner")
    assert binding["metadata"]["namespace"] == STEPS
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gantry-deployer", "namespace": "gantry"}
    ]


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_every_step_pod_starts_from_deny_all_ingress_and_egress(overlay: str) -> None:
    deny = find(overlay, "NetworkPolicy", "gantry-steps-default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "egress" not in deny and "ingress" not in deny
    for policy in steps_policies(overlay):
        assert "ingress" not in policy["spec"], "nothing may connect to a step"


def reachable(peer: Manifest, address: str) -> bool:
    block = peer.get("ipBlock")
    if block is None:
        return False
    ip = ipaddress.ip_address(address)
    network = ipaddress.ip_network(block["cidr"])
    if ip.version != network.version or ip not in network:
        return False
    return not any(
        ip in ipaddress.ip_network(excepted)
        for excepted in block.get("except", [])
        if ipaddress.ip_network(excepted).version == ip.version
    )


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_no_step_policy_reaches_metadata_the_api_server_or_gantry(overlay: str) -> None:
    policies = steps_policies(overlay)
    assert {p["metadata"]["name"] for p in policies} >= {
        "gantry-steps-default-deny",
        "gantry-steps-checkout",
        "gantry-steps-target",
        "gantry-steps-outside",
    }
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                for address in FORBIDDEN_ADDRESSES:
                    assert not reachable(peer, address), (policy["metadata"]["name"], address)
                # Pod or namespace peers: only DNS in kube-system, or the deploy targets.
                namespaces = (peer.get("namespaceSelector") or {}).get("matchLabels")
                if namespaces is not None:
                    assert namespaces in (
                        {"kubernetes.io/metadata.name": "kube-system"},
                        {"gantry.dev/deploy-target": "true"},
                    )
                    assert "gantry" not in str(namespaces.values()).replace("gantry.dev", "")
                if namespaces == {"kubernetes.io/metadata.name": "kube-system"}:
                    assert {p["port"] for p in rule["ports"]} == {53}
                assert peer.get("podSelector") in (None, {"matchLabels": {"k8s-app": "kube-dns"}})


@pytest.mark.parametrize("overlay", ENVIRONMENTS)
def test_only_pods_labelled_for_the_outside_reach_public_addresses(overlay: str) -> None:
    by_name = {p["metadata"]["name"]: p["spec"] for p in steps_policies(overlay)}
    outside = by_name["gantry-steps-outside"]
    assert outside["podSelector"]["matchLabels"]["gantry.dev/network"] == "outside"
    (rule,) = outside["egress"]
    assert any(reachable(peer, "93.184.215.14") for peer in rule["to"])
    for name, spec in by_name.items():
        if name == "gantry-steps-outside":
            continue
        for egress in spec.get("egress", []):
            for peer in egress.get("to", []):
                # The Git host for the checkout, on HTTPS only; nothing else public.
                if "ipBlock" in peer:
                    assert name == "gantry-steps-checkout"
                    assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).num_addresses <= 4096
                    assert {p["port"] for p in egress["ports"]} == {443}
