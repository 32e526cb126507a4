"""From a repository's kustomize overlay to the exact objects a deploy applies, offline.

``kubectl kustomize`` renders ``<manifests>/overlays/<environment>`` through a throwaway
kustomization that sets every image to its pushed digest (kustomize's own ``images``
transformer, so every container and init container of every workload kind is covered).
Gantry then pins every object to the environment's namespace (an object that names another
one is refused: the overlay never chooses where an environment lands), labels each object for
its repository and environment and validates every object against the Kubernetes schemas:
nothing reaches a cluster unless all of it is valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import VersionNotSupportedError

from flows.deploy.targets import DeployError

KUSTOMIZE_TIMEOUT = 60.0
MANAGED_BY = "app.kubernetes.io/managed-by"
REPOSITORY_LABEL = "gantry.dev/repository"
ENVIRONMENT_LABEL = "gantry.dev/environment"
COMMIT_ANNOTATION = "gantry.dev/commit-sha"
# Which container runs which gantry.toml image: how current() reads images back by name.
IMAGES_ANNOTATION = "gantry.dev/images"

_DIGEST_REF = re.compile(r"^(?P<name>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")


class ManifestError(DeployError):
    """The manifests cannot be deployed as they are; nothing was applied."""

    def __init__(self, message: str) -> None:
        super().__init__(message, rolled_back=False, previous_images={})


@dataclass(frozen=True)
class Placement:
    """One container of one workload that runs one of the deployed images."""

    kind: str
    name: str
    container: str
    image_name: str


def object_id(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{obj.get('kind', '?')}/{metadata.get('name', '?')}"


def split_digest_ref(image_name: str, ref: str) -> tuple[str, str]:
    """``host/path@sha256:...`` as (name, digest); a tag or a bare name is refused."""
    match = _DIGEST_REF.match(ref)
    if match is None:
        raise ManifestError(
            f"image {image_name!r} must be deployed by digest (name@sha256:<64 hex>), got {ref!r}"
        )
    return match["name"], match["digest"]


def kustomize_wrapper(overlay: Path, where: Path, images: dict[str, str]) -> dict[str, Any]:
    """A kustomization in ``where`` that renders ``overlay`` with every image by digest."""
    entries = []
    for image_name, ref in sorted(images.items()):
        name, digest = split_digest_ref(image_name, ref)
        entries.append({"name": image_name, "newName": name, "digest": digest})
    # kustomize refuses absolute resource paths; a relative one may leave the root.
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(overlay.resolve(), where.resolve())],
        "images": entries,
    }


async def render_overlay(
    manifests_dir: Path, environment: str, images: dict[str, str]
) -> list[dict[str, Any]]:
    """The overlay's objects with images by digest (``kubectl kustomize``, argv, no shell)."""
    overlay = manifests_dir / "overlays" / environment
    if (
        not (overlay / "kustomization.yaml").is_file()
        and not (overlay / "kustomization.yml").is_file()
    ):
        raise ManifestError(
            f"no kustomize overlay for {environment}: {overlay} has no kustomization.yaml"
        )
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise ManifestError(
            "kubectl is not installed: it renders the kustomize overlays "
            "(Debian package 'kubectl', or any kubectl >= 1.27 on PATH)"
        )
    with tempfile.TemporaryDirectory(prefix="gantry-kustomize-") as tmp:
        where = Path(tmp)
        wrapper = kustomize_wrapper(overlay, where, images)
        (where / "kustomization.yaml").write_text(yaml.safe_dump(wrapper, sort_keys=False))
        process = await asyncio.create_subprocess_exec(
            kubectl,
            "kustomize",
            str(where),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), KUSTOMIZE_TIMEOUT)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise ManifestError(
                f"kubectl kustomize {overlay} took longer than {KUSTOMIZE_TIMEOUT:.0f} s"
            ) from exc
    if process.returncode != 0:
        detail = err.decode("utf-8", "replace").strip()[-2000:]
        raise ManifestError(f"kubectl kustomize {overlay} failed: {detail}")
    return parse_objects(out.decode("utf-8"), str(overlay))


def parse_objects(text: str, source: str) -> list[dict[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source} rendered invalid YAML: {exc}") from exc
    objects: list[dict[str, Any]] = []
    for document in documents:
        if document is None:
            continue
        if (
            not isinstance(document, dict)
            or not document.get("apiVersion")
            or not document.get("kind")
            or not (document.get("metadata") or {}).get("name")
        ):
            raise ManifestError(f"{source} rendered an object without apiVersion/kind/name")
        objects.append(document)
    if not objects:
        raise ManifestError(f"{source} renders no objects")
    return objects


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec inside a workload object, for the kinds that run containers."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec if isinstance(spec, dict) else None
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}:
        found = (spec.get("template") or {}).get("spec")
        return found if isinstance(found, dict) else None
    return None


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj) or {}
    found = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return [container for container in found if isinstance(container, dict)]


def place_images(objects: list[dict[str, Any]], images: dict[str, str]) -> list[Placement]:
    """Which container runs which image; every image must run somewhere, exactly by digest."""
    by_ref = {ref: name for name, ref in images.items()}
    placements: list[Placement] = []
    for obj in objects:
        for container in containers(obj):
            image_name = by_ref.get(str(container.get("image", "")))
            if image_name is not None:
                placements.append(
                    Placement(
                        kind=str(obj["kind"]),
                        name=str(obj["metadata"]["name"]),
                        container=str(container.get("name", "")),
                        image_name=image_name,
                    )
                )
    unused = sorted(set(images) - {placement.image_name for placement in placements})
    if unused:
        raise ManifestError(
            f"no container runs image(s) {', '.join(unused)}: the base kustomization must list "
            "each gantry.toml image under 'images:' and a container must use that name"
        )
    return placements


def pin_namespace(objects: list[dict[str, Any]], environment: str, namespace: str) -> None:
    """Place every object in ``namespace``; refuse, naming each, objects that name another.

    A staging overlay that says ``namespace: production`` (or one object that does) is an
    error, not a redirect. Cluster-scoped objects are told apart later, by the API's discovery.
    """
    strays = []
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        rendered = metadata.get("namespace")
        if rendered and rendered != namespace:
            strays.append(f"{object_id(obj)} names namespace {rendered!r}")
        metadata["namespace"] = namespace
    if strays:
        raise ManifestError(
            f"{environment} deploys only to namespace {namespace!r}; nothing was applied: "
            + "; ".join(strays)
        )


def label_objects(
    objects: list[dict[str, Any]],
    placements: list[Placement],
    repository_slug: str,
    environment: str,
    commit_sha: str,
) -> None:
    """Mark every object as Gantry's for this repository and environment (metadata only).

    Selectors and pod templates are left alone: selectors are immutable, and a template
    change would restart pods on every deploy even when no image changed.
    """
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        labels = metadata.get("labels") or {}
        labels.update(
            {
                MANAGED_BY: "gantry",
                REPOSITORY_LABEL: repository_slug,
                ENVIRONMENT_LABEL: environment,
            }
        )
        metadata["labels"] = labels
        annotations = metadata.get("annotations") or {}
        if commit_sha:
            annotations[COMMIT_ANNOTATION] = commit_sha
        mine = {
            placement.container: placement.image_name
            for placement in placements
            if placement.kind == obj["kind"] and placement.name == metadata["name"]
        }
        if mine:
            annotations[IMAGES_ANNOTATION] = json.dumps(mine, sort_keys=True)
        if annotations:
            metadata["annotations"] = annotations


def validate_objects(objects: list[dict[str, Any]], kubernetes_version: str) -> None:
    """Every object against the Kubernetes schemas, strictly; all problems in one error."""
    problems: list[str] = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path) or "(object)"
            problems.append(f"{object_id(obj)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"{object_id(obj)}: no schema for {obj.get('apiVersion')} {obj.get('kind')} in "
                f"Kubernetes {kubernetes_version}"
            )
        except VersionNotSupportedError as exc:
            raise ManifestError(
                f"cannot validate manifests: Kubernetes {kubernetes_version} is not supported "
                "by kubernetes-validate"
            ) from exc
    if problems:
        raise ManifestError("invalid manifests, nothing was applied:\n  " + "\n  ".join(problems))
