"""Where the steps of a run find the engine, the registry and each environment's target.

Blocks saved on the Prefect server win; without them the local stack's defaults apply, so a
fresh `gantry up` works with no configuration at all.
"""

from __future__ import annotations

import os

from core.settings import StackSettings
from flows.deploy.local import LocalContainerTarget
from flows.deploy.targets import DeployTarget


def docker_host() -> str:
    return os.environ.get("GANTRY_DOCKER_HOST") or StackSettings().docker_host


def registry_address() -> str:
    return os.environ.get("GANTRY_REGISTRY") or StackSettings().registry_address


def local_target() -> LocalContainerTarget:
    settings = StackSettings()
    ports = {"staging": settings.staging_port, "production": settings.production_port}
    return LocalContainerTarget(docker_host(), ports, settings.state_dir, host=settings.host)


def target_block_name(environment: str) -> str | None:
    """The Kubernetes target block an environment deploys through (GANTRY_<ENV>_TARGET)."""
    return os.environ.get(f"GANTRY_{environment.upper()}_TARGET") or None


async def deploy_target(environment: str) -> DeployTarget:
    """The target of ``environment``: a saved Kubernetes target block, else local containers."""
    block_name = target_block_name(environment)
    if block_name:
        from flows.deploy.kubernetes.target import KubernetesDeployTarget

        return await KubernetesDeployTarget.load(block_name)
    return local_target()
