"""Deploy targets: where an environment runs, behind one small interface.

Staging and production each name a target (local containers by default, a Kubernetes cluster in
production). A target deploys images *by digest*, waits until the new version is healthy, and
rolls back to what ran before when it is not: a failed deploy never leaves an environment broken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
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
    # The checkout the manifests come from: they must stay inside it (``confined_manifests``).
    workspace: Path | None = None
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


# Kustomization fields that name other files or directories to load.
_KUSTOMIZE_PATHS = ("resources", "bases", "components", "crds", "configurations", "openapi")
_KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class ManifestsOutsideError(DeployError):
    """The manifests lead out of the checkout; nothing was read from there, nothing applied."""

    def __init__(self, message: str) -> None:
        super().__init__(message, rolled_back=False, previous_images={})


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _kustomize_references(kustomization: Path) -> list[str]:
    """The local paths a kustomization loads (remote URLs are kustomize's own to refuse)."""
    try:
        content: Any = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []  # kustomize reports it, with its own words
    found: list[str] = []
    if not isinstance(content, dict):
        return found
    for key in _KUSTOMIZE_PATHS:
        entries = content.get(key)
        if isinstance(entries, dict):  # openapi: {path: ...}
            entries = [entries.get("path")]
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, str) and "://" not in entry and not entry.startswith("git@"):
                found.append(entry)
    return found


def confined_manifests(request: DeployRequest, *, required: bool) -> Path | None:
    """The manifests directory with symlinks resolved, refused if anything leads out of the
    checkout: the directory itself, a symlink under it, or a kustomization entry. Checked at
    deploy time because the steps that ran before could write the checkout."""
    if request.manifests_dir is None:
        return None
    if request.workspace is None:
        raise ManifestsOutsideError("the deploy request names manifests but no checkout")
    root = request.workspace.resolve()
    manifests = request.manifests_dir.resolve()
    shown = os.path.relpath(request.manifests_dir, request.workspace)
    if not _inside(manifests, root):
        raise ManifestsOutsideError(f"[deploy] manifests {shown!r} leads out of the checkout")
    if not manifests.is_dir():
        if required:
            raise ManifestsOutsideError(f"[deploy] manifests {shown!r} is not a directory")
        return None
    for folder, dirs, files in os.walk(manifests, followlinks=False):
        here = Path(folder)
        for name in [*dirs, *files]:
            entry = here / name
            if entry.is_symlink() and not _inside(entry.resolve(), root):
                where = entry.relative_to(manifests)
                raise ManifestsOutsideError(
                    f"[deploy] manifests: {shown}/{where} is a link that leads out of the checkout"
                )
            if name in _KUSTOMIZATIONS and entry.is_file():
                for reference in _kustomize_references(entry):
                    if not _inside((here / reference).resolve(), root):
                        raise ManifestsOutsideError(
                            f"[deploy] manifests: {shown}/{entry.relative_to(manifests)} loads "
                            f"{reference!r}, outside the checkout"
                        )
    return manifests


class DeployTarget(Protocol):
    """An environment's runtime. Implementations: local containers, Kubernetes."""

    async def current(self, repository_slug: str, environment: Environment) -> dict[str, str]:
        """The image references running now, by image name (empty when nothing runs)."""
        ...

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        """Deploy and wait for health; on failure roll back, then raise DeployError."""
        ...
