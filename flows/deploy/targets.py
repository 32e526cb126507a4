"""Deploy targets: where an environment runs, behind one small interface.

Staging and production each name a target (local containers by default, a Kubernetes cluster in
production). A target deploys images *by digest*, waits until the new version is healthy, and
rolls back to what ran before when it is not: a failed deploy never leaves an environment broken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field

from flows.config import Image

Environment = Literal["staging", "production"]


class DeployRequest(BaseModel):
    """One deploy of one repository's images to one environment."""

    repository_slug: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    environment: Environment
    # Image name (as in gantry.toml) -> full reference by digest: "host/path/name@sha256:...".
    images: dict[str, str]
    image_specs: list[Image] = Field(default_factory=list)
    # Rendered with kustomize from <manifests>/overlays/<environment> (Kubernetes targets).
    manifests_dir: Path | None = None
    commit_sha: str = ""
    timeout: float = Field(default=300.0, gt=0)


class DeployOutcome(BaseModel):
    url: str | None = None
    # What ran before this deploy, by image name; empty for the first deploy.
    previous_images: dict[str, str] = Field(default_factory=dict)
    detail: str = ""


class DeployError(RuntimeError):
    """The new version did not become healthy; ``rolled_back`` says whether the old one is back."""

    def __init__(self, message: str, rolled_back: bool, previous_images: dict[str, str]) -> None:
        super().__init__(message)
        self.rolled_back = rolled_back
        self.previous_images = previous_images


class DeployTarget(Protocol):
    """An environment's runtime. Implementations: local containers, Kubernetes."""

    async def current(self, repository_slug: str, environment: Environment) -> dict[str, str]:
        """The image references running now, by image name (empty when nothing runs)."""
        ...

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        """Deploy and wait for health; on failure roll back, then raise DeployError."""
        ...
