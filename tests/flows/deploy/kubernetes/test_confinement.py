"""The deploy stage reads manifests only from inside the checkout: links and paths out are refused.

Each repository here is a real git repository cloned into a workspace the way a checkout is, so
a symlink committed to it arrives in the workspace as a symlink.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flows.deploy.kubernetes.target import KubernetesDeployTarget
from flows.deploy.local import LocalContainerTarget
from flows.deploy.targets import DeployError, DeployRequest
from tests.flows.deploy.kubernetes.conftest import ApiServerEmulator, RolloutController
from tests.flows.deploy.kubernetes.trees import deployment, digest_ref, write_tree
from tests.plugins.gitrepo import GitRepo

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

NEW = digest_ref("b")
WORKER_SECRET = "worker-only-value-7f3a9c"


def request(workspace: Path, manifests: str = "deploy") -> DeployRequest:
    return DeployRequest(
        repository_slug="acme-tasks-api",
        environment="staging",
        images={"tasks-api": NEW},
        manifests_dir=workspace / manifests,
        workspace=workspace,
        commit_sha="2" * 40,
        timeout=10.0,
    )


@pytest.fixture
def checked_out(
    make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> Callable[[Callable[[Path], None]], Path]:
    """A repository shaped by ``build``, committed, then cloned into a fresh workspace."""

    def checkout(build: Callable[[Path], None]) -> Path:
        repo = make_repo("service")
        build(repo.path)
        repo.commit({"README.md": "service\n"})
        workspace = tmp_path / "workspace"
        subprocess.run(
            ["git", "clone", "--quiet", str(repo.path), str(workspace)], check=True, timeout=30
        )
        return workspace

    return checkout


@pytest.fixture
def worker_files(tmp_path: Path) -> Path:
    """Files of the worker, outside any checkout: a kustomize tree and a secret among them."""
    outside = tmp_path / "worker"
    write_tree(outside / "tree", [deployment()])
    (outside / "secret.yaml").write_text(f"token: {WORKER_SECRET}\n")
    return outside


async def test_a_manifests_directory_that_is_a_link_to_etc_is_refused(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    checked_out: Callable[[Callable[[Path], None]], Path],
) -> None:
    workspace = checked_out(lambda root: (root / "deploy").symlink_to("/etc"))

    with pytest.raises(DeployError, match="'deploy' leads out of the checkout") as caught:
        await deploy_target.deploy(request(workspace))

    assert caught.value.rolled_back is False
    assert emulator.received() == []


async def test_a_link_inside_the_manifests_to_the_workers_files_is_refused(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    checked_out: Callable[[Callable[[Path], None]], Path],
    worker_files: Path,
) -> None:
    def build(root: Path) -> None:
        write_tree(root / "deploy", [deployment()])
        (root / "deploy" / "base" / "settings.yaml").symlink_to(worker_files / "secret.yaml")

    workspace = checked_out(build)

    with pytest.raises(DeployError, match=r"deploy/base/settings\.yaml is a link") as caught:
        await deploy_target.deploy(request(workspace))

    assert WORKER_SECRET not in str(caught.value)
    assert str(worker_files) not in str(caught.value)
    assert emulator.received() == []


async def test_a_kustomization_loading_a_tree_outside_the_checkout_is_refused(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    checked_out: Callable[[Callable[[Path], None]], Path],
    worker_files: Path,
) -> None:
    def build(root: Path) -> None:
        write_tree(root / "deploy", [deployment()])
        overlay = root / "deploy" / "overlays" / "staging"
        # Where the workspace will be, the same depth as the repository: ../.. up to tmp_path.
        escape = os.path.relpath(worker_files / "tree" / "base", overlay)
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump({"namespace": "staging", "resources": [escape]})
        )

    workspace = checked_out(build)

    with pytest.raises(DeployError, match=r"kustomization\.yaml loads .* outside the checkout"):
        await deploy_target.deploy(request(workspace))

    assert emulator.received() == []


async def test_a_link_that_stays_inside_the_checkout_is_followed(
    deploy_target: KubernetesDeployTarget,
    emulator: ApiServerEmulator,
    controller: RolloutController,
    checked_out: Callable[[Callable[[Path], None]], Path],
) -> None:
    controller.healthy = {NEW}

    def build(root: Path) -> None:
        write_tree(root / "k8s", [deployment()])
        (root / "deploy").symlink_to("k8s")

    workspace = checked_out(build)

    await deploy_target.deploy(request(workspace))

    assert emulator.deployment("staging", "tasks-api")["spec"]["replicas"] == 2


async def test_the_local_target_refuses_manifests_that_lead_out_too(
    checked_out: Callable[[Callable[[Path], None]], Path], tmp_path: Path
) -> None:
    workspace = checked_out(lambda root: (root / "deploy").symlink_to("/etc"))
    # No engine listens at this address: the refusal comes before any container call.
    target = LocalContainerTarget(
        "tcp://127.0.0.1:9", {"staging": 9, "production": 9}, tmp_path / "state"
    )

    with pytest.raises(DeployError, match="leads out of the checkout"):
        await target.deploy(request(workspace))
