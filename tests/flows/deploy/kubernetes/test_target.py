"""KubernetesDeployTarget against an emulated API server: apply by digest, wait, roll back."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from kmock import KubernetesError

from blocks.cluster import KubernetesTarget
from flows.deploy.kubernetes.api import RETRY
from flows.deploy.kubernetes.target import KubernetesDeployTarget
from flows.deploy.targets import DeployError, DeployRequest
from tests.flows.deploy.kubernetes.conftest import (
    EMULATOR_TOKEN,
    ApiServerEmulator,
    RolloutController,
)
from tests.flows.deploy.kubernetes.trees import deployment, digest_ref, write_tree

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SLUG = "acme-tasks-api"
OLD = digest_ref("a")
NEW = digest_ref("b")
SHA_OLD = "1" * 40
SHA_NEW = "2" * 40


def request(
    manifests: Path, image: str, sha: str = SHA_NEW, timeout: float = 10.0
) -> DeployRequest:
    return DeployRequest(
        repository_slug=SLUG,
        environment="staging",
        images={"tasks-api": image},
        manifests_dir=manifests,
        workspace=manifests.parent,
        commit_sha=sha,
        timeout=timeout,
    )


async def test_first_deploy_applies_every_object_by_digest_and_labels_it(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    manifests: Path,
) -> None:
    controller.healthy = {NEW}

    outcome = await deploy_target.deploy(request(manifests, NEW))

    live = emulator.deployment("staging", "tasks-api")
    (container,) = live["spec"]["template"]["spec"]["containers"]
    assert container["image"] == NEW
    assert "@sha256:" in container["image"]
    labels = live["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "gantry"
    assert labels["gantry.dev/repository"] == SLUG
    assert labels["gantry.dev/environment"] == "staging"
    # Selectors are immutable: Gantry's labels stay out of them.
    assert "gantry.dev/repository" not in live["spec"]["selector"]["matchLabels"]
    assert live["metadata"]["annotations"]["gantry.dev/commit-sha"] == SHA_NEW
    service = emulator.objects["v1/services", "staging", "tasks-api"].raw
    assert service["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gantry"
    assert outcome.url == "http://tasks-api.staging.svc"
    assert outcome.previous_images == {}
    assert ("tasks-api", 1, "available") in controller.seen


async def test_deploy_speaks_to_the_cluster_with_the_kubeconfig_credentials(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    manifests: Path,
) -> None:
    controller.healthy = {NEW}

    await deploy_target.deploy(request(manifests, NEW))

    writes = emulator.writes()
    assert writes, "the deploy wrote nothing"
    assert {r.headers.get("Authorization") for r in writes} == {f"Bearer {EMULATOR_TOKEN}"}
    assert {r.headers.get("Content-Type") for r in writes} == {"application/apply-patch+yaml"}
    assert all(r.params.get("fieldManager") == "gantry" for r in writes)


async def test_current_returns_the_images_running_for_that_repository_and_environment(
    deploy_target: KubernetesDeployTarget, controller: RolloutController, manifests: Path
) -> None:
    controller.healthy = {NEW}
    assert await deploy_target.current(SLUG, "staging") == {}

    await deploy_target.deploy(request(manifests, NEW))

    assert await deploy_target.current(SLUG, "staging") == {"tasks-api": NEW}
    assert await deploy_target.current("other-service", "staging") == {}
    assert await deploy_target.current(SLUG, "production") == {}


async def test_a_second_deploy_reports_what_ran_before(
    deploy_target: KubernetesDeployTarget, controller: RolloutController, manifests: Path
) -> None:
    controller.healthy = {OLD, NEW}
    await deploy_target.deploy(request(manifests, OLD, SHA_OLD))

    outcome = await deploy_target.deploy(request(manifests, NEW))

    assert outcome.previous_images == {"tasks-api": OLD}
    assert await deploy_target.current(SLUG, "staging") == {"tasks-api": NEW}


async def test_a_stalled_rollout_times_out_and_rolls_back_to_the_previous_digest(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    manifests: Path,
) -> None:
    controller.healthy = {OLD}
    controller.otherwise = "stall"
    await deploy_target.deploy(request(manifests, OLD, SHA_OLD))

    with pytest.raises(DeployError) as caught:
        await deploy_target.deploy(request(manifests, NEW, timeout=0.5))

    assert caught.value.rolled_back is True
    assert caught.value.previous_images == {"tasks-api": OLD}
    assert "not available after 0.5 s" in str(caught.value)
    assert "0 of 1 updated replicas available" in str(caught.value)
    assert "rolled back Deployment/tasks-api" in str(caught.value)
    live = emulator.deployment("staging", "tasks-api")
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == OLD
    assert live["metadata"]["annotations"]["gantry.dev/commit-sha"] == SHA_OLD
    assert await deploy_target.current(SLUG, "staging") == {"tasks-api": OLD}
    assert [outcome for _, _, outcome in controller.seen][:2] == ["available", "stalled"]


async def test_progress_deadline_exceeded_fails_without_waiting_out_the_timeout(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    manifests: Path,
) -> None:
    controller.healthy = {OLD}
    controller.otherwise = "fail"
    await deploy_target.deploy(request(manifests, OLD, SHA_OLD))

    # A rollout timeout far longer than the test may run (pytest-timeout): returning at all
    # proves the progress deadline ended the wait, not the timeout.
    with pytest.raises(DeployError) as caught:
        await deploy_target.deploy(request(manifests, NEW, timeout=3600))

    assert caught.value.rolled_back is True
    assert "progress deadline exceeded" in str(caught.value)
    assert "has timed out progressing" in str(caught.value)
    live = emulator.deployment("staging", "tasks-api")
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == OLD


async def test_a_failed_first_deploy_has_nothing_to_roll_back_to(
    deploy_target: KubernetesDeployTarget, controller: RolloutController, manifests: Path
) -> None:
    controller.otherwise = "stall"

    with pytest.raises(DeployError) as caught:
        await deploy_target.deploy(request(manifests, NEW, timeout=0.3))

    assert caught.value.rolled_back is False
    assert caught.value.previous_images == {}
    assert "nothing ran before" in str(caught.value)


async def test_an_invalid_manifest_is_refused_before_the_cluster_is_contacted(
    deploy_target: KubernetesDeployTarget, emulator: ApiServerEmulator, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "deploy", [deployment(revisionHistoryLimit="five")])

    with pytest.raises(DeployError) as caught:
        await deploy_target.deploy(request(tree, NEW))

    message = str(caught.value)
    assert "Deployment/tasks-api" in message
    assert "spec.revisionHistoryLimit" in message
    assert "'five' is not of type 'integer'" in message
    assert "nothing was applied" in message
    assert caught.value.rolled_back is False
    assert emulator.received() == []


async def test_an_unknown_field_is_refused_by_strict_validation(
    deploy_target: KubernetesDeployTarget, emulator: ApiServerEmulator, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "deploy", [deployment(replicaz=3)])

    with pytest.raises(DeployError, match="Deployment/tasks-api"):
        await deploy_target.deploy(request(tree, NEW))

    assert emulator.writes() == []


@pytest.mark.parametrize(
    "image",
    [
        "127.0.0.1:5000/acme-tasks-api/tasks-api:latest",
        "127.0.0.1:5000/acme-tasks-api/tasks-api",
        "127.0.0.1:5000/acme-tasks-api/tasks-api@sha256:abc",
    ],
)
async def test_an_image_not_given_by_digest_is_refused(
    deploy_target: KubernetesDeployTarget, emulator: ApiServerEmulator, manifests: Path, image: str
) -> None:
    with pytest.raises(DeployError, match="must be deployed by digest"):
        await deploy_target.deploy(request(manifests, image))

    assert emulator.received() == []


async def test_an_image_no_container_uses_is_refused(
    deploy_target: KubernetesDeployTarget, emulator: ApiServerEmulator, tmp_path: Path
) -> None:
    tree = write_tree(tmp_path / "deploy", [deployment(image="something-else")])

    with pytest.raises(DeployError, match="no container runs image"):
        await deploy_target.deploy(request(tree, NEW))

    assert emulator.received() == []


async def test_an_overlay_aiming_at_another_namespace_is_refused_before_any_write(
    target_block: KubernetesTarget, emulator: ApiServerEmulator, manifests: Path
) -> None:
    guarded = target_block.model_copy(update={"namespaces": {"staging": "staging-eu"}})

    with pytest.raises(DeployError, match="names namespace 'staging'") as caught:
        await KubernetesDeployTarget(guarded).deploy(request(manifests, NEW))

    assert "staging deploys only to namespace 'staging-eu'" in str(caught.value)
    assert emulator.received() == []


async def test_the_target_namespace_applies_when_the_overlay_names_none(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    tmp_path: Path,
) -> None:
    controller.healthy = {NEW}
    tree = write_tree(tmp_path / "deploy", [deployment()], namespace=None)

    await deploy_target.deploy(request(tree, NEW))

    assert emulator.deployment("staging", "tasks-api")["spec"]["replicas"] == 2


async def test_the_url_comes_from_an_ingress_host_when_there_is_one(
    deploy_target: KubernetesDeployTarget, controller: RolloutController, tmp_path: Path
) -> None:
    controller.healthy = {NEW}
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "tasks-api"},
        "spec": {
            "tls": [{"hosts": ["tasks.staging.example"], "secretName": "tls"}],
            "rules": [{"host": "tasks.staging.example"}],
        },
    }
    tree = write_tree(tmp_path / "deploy", [deployment(), ingress])

    outcome = await deploy_target.deploy(request(tree, NEW))

    assert outcome.url == "https://tasks.staging.example"


async def test_an_unreachable_cluster_fails_before_applying_anything(
    target_block: KubernetesTarget, manifests: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = yaml.safe_load(yaml.safe_dump(target_block.cluster_config.config))
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    (tmp_path / "closed.yaml").write_text(yaml.safe_dump(config))
    target = KubernetesDeployTarget.from_kubeconfig(
        tmp_path / "closed.yaml", namespaces={"staging": "staging"}
    )

    with pytest.raises(DeployError) as caught:
        await target.deploy(request(manifests, NEW))

    assert caught.value.rolled_back is False
    assert "before applying anything" in str(caught.value)
    assert "did not answer" in str(caught.value)
    assert EMULATOR_TOKEN not in str(caught.value)


async def test_a_transient_api_server_error_is_retried(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    manifests: Path,
) -> None:
    controller.healthy = {NEW}
    failed: list[Any] = []

    def unavailable_once(incoming: Any) -> KubernetesError | None:
        if str(incoming.url.path) != "/apis/apps/v1" or failed:
            return None
        failed.append(incoming)
        return KubernetesError(status=503, reason="ServiceUnavailable", message="restarting")

    emulator.fault = unavailable_once

    await deploy_target.deploy(request(manifests, NEW))

    discovery = [r for r in emulator.received() if str(r.url.path) == "/apis/apps/v1"]
    assert len(discovery) == 2
    assert (
        emulator.deployment("staging", "tasks-api")["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == NEW
    )


async def test_an_api_server_that_stays_unavailable_fails_the_deploy_after_the_bound(
    deploy_target: KubernetesDeployTarget, emulator: ApiServerEmulator, manifests: Path
) -> None:
    def unavailable(incoming: Any) -> KubernetesError | None:
        if str(incoming.url.path) != "/apis/apps/v1":
            return None
        return KubernetesError(status=503, reason="ServiceUnavailable", message="restarting")

    emulator.fault = unavailable

    with pytest.raises(DeployError) as caught:
        await deploy_target.deploy(request(manifests, NEW))

    assert caught.value.rolled_back is False
    assert "before applying anything" in str(caught.value)
    assert "answered 503 Service Unavailable: restarting" in str(caught.value)
    discovery = [r for r in emulator.received() if str(r.url.path) == "/apis/apps/v1"]
    assert len(discovery) == RETRY.attempts
    assert emulator.writes() == []


async def test_an_api_server_refusal_during_the_rollout_rolls_back_what_ran(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    manifests: Path,
) -> None:
    controller.healthy = {OLD, NEW}
    await deploy_target.deploy(request(manifests, OLD, SHA_OLD))
    path = "/apis/apps/v1/namespaces/staging/deployments/tasks-api"
    reads = 0

    def refuse_rollout_reads(incoming: Any) -> KubernetesError | None:
        # The first read (what runs now) is answered; the rollout's reads are refused.
        nonlocal reads
        if str(incoming.method.value) != "GET" or str(incoming.url.path) != path:
            return None
        reads += 1
        return (
            KubernetesError(status=403, reason="Forbidden", message="rbac says no")
            if reads > 1
            else None
        )

    emulator.fault = refuse_rollout_reads

    with pytest.raises(DeployError) as caught:
        await deploy_target.deploy(request(manifests, NEW))

    emulator.fault = None
    assert "answered 403 Forbidden: rbac says no" in str(caught.value)
    assert caught.value.rolled_back is True
    live = emulator.deployment("staging", "tasks-api")
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == OLD
