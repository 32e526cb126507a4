"""Gantry's own Kubernetes manifests: each overlay rendered with kustomize and validated offline
against the Kubernetes API schemas, then the properties that matter pinned."""

from __future__ import annotations

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
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
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
def test_deployer_may_act_only_in_staging_and_production(overlay: str) -> None:
    assert not list(of_kind(overlay, "ClusterRole"))
    assert not list(of_kind(overlay, "ClusterRoleBinding"))
    bindings = [
        doc
        for doc in of_kind(overlay, "RoleBinding")
        if any(subject["name"] == "gantry-deployer" for subject in doc["subjects"])
    ]
    assert {doc["metadata"]["namespace"] for doc in bindings} == TARGET_NAMESPACES


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
