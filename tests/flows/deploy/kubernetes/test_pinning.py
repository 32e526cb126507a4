"""Each environment is pinned to its namespace: the overlay never decides where a deploy lands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from blocks.cluster import KubernetesTarget
from flows.deploy.kubernetes.target import KubernetesDeployTarget
from flows.deploy.targets import DeployError, DeployRequest, Environment
from tests.flows.deploy.kubernetes.conftest import ApiServerEmulator, RolloutController
from tests.flows.deploy.kubernetes.trees import deployment, digest_ref, write_tree

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

NEW = digest_ref("b")
CLUSTER_ROLE: dict[str, Any] = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "tasks-api-reader"},
    "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
}


def request(manifests: Path, environment: Environment = "staging") -> DeployRequest:
    return DeployRequest(
        repository_slug="acme-tasks-api",
        environment=environment,
        images={"tasks-api": NEW},
        manifests_dir=manifests,
        workspace=manifests.parent,
        commit_sha="2" * 40,
        timeout=10.0,
    )


def unmapped(block: KubernetesTarget, **settings: Any) -> KubernetesDeployTarget:
    """The emulator's target with no namespace map at all: only the naming rule applies."""
    return KubernetesDeployTarget(block.model_copy(update={"namespaces": {}, **settings}))


async def test_a_staging_overlay_naming_the_production_namespace_is_refused_before_any_request(
    target_block: KubernetesTarget, emulator: ApiServerEmulator, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "deploy", [deployment()], namespace="production")

    with pytest.raises(DeployError) as caught:
        await unmapped(target_block).deploy(request(tree))

    message = str(caught.value)
    assert "staging deploys only to namespace 'staging'" in message
    assert "Deployment/tasks-api names namespace 'production'" in message
    assert caught.value.rolled_back is False
    assert emulator.received() == []
    assert not [key for key in emulator.objects if key[1] == "production"]


async def test_one_object_naming_another_namespace_is_refused_too(
    target_block: KubernetesTarget, emulator: ApiServerEmulator, tmp_path: Path
) -> None:
    stray = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "production"},
        "data": {"mode": "prod"},
    }
    tree = write_tree(tmp_path / "deploy", [deployment(), stray], namespace=None)

    with pytest.raises(DeployError, match="ConfigMap/settings names namespace 'production'"):
        await unmapped(target_block).deploy(request(tree))

    assert emulator.received() == []


async def test_without_a_map_each_environment_lands_in_the_namespace_of_its_name(
    target_block: KubernetesTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    tmp_path: Path,
) -> None:
    controller.healthy = {NEW}
    tree = write_tree(tmp_path / "deploy", [deployment()], namespace=None, environment="production")

    outcome = await unmapped(target_block).deploy(request(tree, "production"))

    assert emulator.deployment("production", "tasks-api")["metadata"]["namespace"] == "production"
    assert outcome.url is None or "production" in outcome.url


async def test_the_naming_rule_takes_the_blocks_prefix(
    target_block: KubernetesTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    tmp_path: Path,
) -> None:
    controller.healthy = {NEW}
    tree = write_tree(tmp_path / "deploy", [deployment()], namespace=None)

    await unmapped(target_block, namespace_prefix="acme-").deploy(request(tree))

    assert emulator.deployment("acme-staging", "tasks-api")["spec"]["replicas"] == 2


async def test_a_cluster_scoped_kind_not_allowed_is_refused_before_any_write(
    deploy_target: KubernetesDeployTarget, emulator: ApiServerEmulator, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "deploy", [deployment(), CLUSTER_ROLE])

    with pytest.raises(DeployError, match="cluster-scoped ClusterRole/tasks-api-reader"):
        await deploy_target.deploy(request(tree))

    assert emulator.writes() == []


async def test_a_cluster_scoped_kind_the_block_allows_is_applied_without_a_namespace(
    target_block: KubernetesTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    tmp_path: Path,
) -> None:
    controller.healthy = {NEW}
    tree = write_tree(tmp_path / "deploy", [deployment(), CLUSTER_ROLE])
    allowing = target_block.model_copy(
        update={"cluster_scoped_kinds": ["rbac.authorization.k8s.io/ClusterRole"]}
    )

    await KubernetesDeployTarget(allowing).deploy(request(tree))

    applied = [
        yaml.safe_load(yaml.safe_dump(obj.raw))
        for key, obj in emulator.objects.items()
        if key[2] == "tasks-api-reader"
    ]
    assert len(applied) == 1
    assert "namespace" not in applied[0]["metadata"]
    assert emulator.deployment("staging", "tasks-api")["spec"]["replicas"] == 2
