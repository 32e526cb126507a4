"""The Gantry Kubernetes target block: built from a kubeconfig like a user's, refusing bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from blocks.cluster import ClusterConfigError, KubernetesClusterConfig, KubernetesTarget
from flows.deploy.kubernetes.target import KubernetesDeployTarget
from flows.deploy.targets import DeployTarget
from tests.flows.deploy.kubernetes.conftest import ApiServerEmulator

# Async throughout: the kubeconfig comes from the (async) emulator fixture.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def test_the_block_type_is_named_for_gantry() -> None:
    assert KubernetesTarget.get_block_type_name() == "Gantry Kubernetes target"
    assert KubernetesTarget.get_block_type_slug() == "gantry-kubernetes-target"


async def test_a_target_built_from_a_kubeconfig_keeps_its_context_and_settings(
    kubeconfig: Path,
) -> None:
    target = KubernetesDeployTarget.from_kubeconfig(
        kubeconfig, "emulator", namespaces={"production": "prod"}, rollout_timeout=120
    )
    block = target.target
    assert isinstance(block.cluster_config, KubernetesClusterConfig)
    assert block.cluster_config.context_name == "emulator"
    assert block.namespace_for("production") == "prod"
    # Not in the map: the naming rule, never "whatever the overlay says".
    assert block.namespace_for("staging") == "staging"
    assert block.rollout_timeout == 120
    # The protocol the pipeline flows call.
    as_protocol: DeployTarget = target
    assert as_protocol is target


async def test_an_unknown_context_is_refused_with_the_known_ones(kubeconfig: Path) -> None:
    with pytest.raises(ClusterConfigError, match=r"Context 'nope' not found.*emulator"):
        KubernetesTarget.from_kubeconfig(kubeconfig, "nope")


async def test_a_namespace_that_is_not_a_dns_label_is_refused(kubeconfig: Path) -> None:
    config = KubernetesClusterConfig.from_file(kubeconfig)
    with pytest.raises(ValidationError, match="not a valid namespace name"):
        KubernetesTarget(cluster_config=config, namespaces={"staging": "Staging_EU"})


async def test_the_api_client_reaches_the_cluster_the_kubeconfig_names(
    target_block: KubernetesTarget, emulator: ApiServerEmulator
) -> None:
    async with target_block.api_client() as client:
        assert client.configuration.host == str(emulator.servers[0].url).rstrip("/")


async def test_a_kubeconfig_context_without_a_cluster_is_a_clear_error(kubeconfig: Path) -> None:
    config = KubernetesClusterConfig.from_file(kubeconfig)
    broken = config.model_copy(update={"config": {**config.config, "clusters": []}}, deep=True)
    target = KubernetesTarget(cluster_config=broken)

    with pytest.raises(ClusterConfigError, match="context 'emulator' is unusable"):
        async with target.api_client():
            pass
