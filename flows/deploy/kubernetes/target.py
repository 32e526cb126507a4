"""The Kubernetes deploy target: render, validate, apply by digest, wait, roll back on failure.

1. Offline, before the cluster is contacted: render the environment's kustomize overlay with
   every image set to its pushed digest, pin every object to the environment's namespace
   (refusing one that names another), label every object for its repository and environment,
   and validate every object against the Kubernetes schemas. Then, by discovery and still
   before any write, refuse cluster-scoped kinds the target block does not allow.
2. Read the live Deployments to remember which images ran before.
3. Server-side apply every object (field manager "gantry").
4. Wait for each Deployment's rollout within the deploy's time.
5. On failure, re-apply the previous images to the Deployments that existed before, then
   raise ``DeployError`` saying why and whether the old version is back.

The target talks to whatever cluster its ``KubernetesTarget`` block's kubeconfig names.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blocks.cluster import ClusterConfigError, KubernetesTarget
from blocks.saved import load_saved_block
from flows.deploy.kubernetes.api import ClusterError, KubeApi, ResourceType
from flows.deploy.kubernetes.render import (
    COMMIT_ANNOTATION,
    ENVIRONMENT_LABEL,
    IMAGES_ANNOTATION,
    MANAGED_BY,
    REPOSITORY_LABEL,
    ManifestError,
    Placement,
    containers,
    label_objects,
    object_id,
    pin_namespace,
    place_images,
    render_overlay,
    validate_objects,
)
from flows.deploy.kubernetes.rollout import (
    Polling,
    RolloutFailedError,
    RolloutTimeoutError,
    wait_for_rollouts,
)
from flows.deploy.targets import (
    DeployError,
    DeployOutcome,
    DeployRequest,
    Environment,
    confined_manifests,
)
from flows.logs import step_logger

__all__ = ["KubernetesDeployTarget"]


@dataclass
class _Planned:
    """One rendered object and where it goes."""

    obj: dict[str, Any]
    rtype: ResourceType
    namespace: str | None


@dataclass
class _Previous:
    """What ran before, per Deployment: container name -> image, and its commit."""

    images: dict[tuple[str | None, str], dict[str, str]] = field(default_factory=dict)
    commits: dict[tuple[str | None, str], str] = field(default_factory=dict)


class KubernetesDeployTarget:
    """A ``DeployTarget`` for one Kubernetes cluster, configured by a ``KubernetesTarget`` block."""

    def __init__(self, target: KubernetesTarget) -> None:
        self.target = target

    @classmethod
    async def load(cls, block_name: str) -> KubernetesDeployTarget:
        """The target from a saved ``Gantry Kubernetes target`` block (its secrets masked)."""
        block = await load_saved_block(KubernetesTarget, block_name)
        if block is None:
            raise ManifestError(
                f"the Kubernetes target block {block_name!r} cannot be read (see the log)"
            )
        return cls(block)

    @classmethod
    def from_kubeconfig(
        cls, path: Path | str | None = None, context: str | None = None, **settings: Any
    ) -> KubernetesDeployTarget:
        """The target from a kubeconfig file; ``settings`` are ``KubernetesTarget`` fields."""
        return cls(KubernetesTarget.from_kubeconfig(path, context, **settings))

    async def current(self, repository_slug: str, environment: Environment) -> dict[str, str]:
        labels = _labels(repository_slug, environment)
        try:
            namespace = self.target.namespace_for(environment)
            async with self.target.api_client() as client:
                api = KubeApi(client, self.target.field_manager)
                rtype = await api.resource_type("apps/v1", "Deployment")
                live = await api.select(rtype, namespace, labels)
        except (ClusterError, ClusterConfigError) as exc:
            raise DeployError(f"cannot read what runs in {environment}: {exc}", False, {}) from exc
        running: dict[str, str] = {}
        for deployment in sorted(live, key=lambda d: str(d["metadata"].get("name"))):
            names = _image_names(deployment)
            for container in containers(deployment):
                image_name = names.get(str(container.get("name")))
                if image_name and image_name not in running:
                    running[image_name] = str(container.get("image", ""))
        return running

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        logger = step_logger(f"deploy-{request.environment}")
        manifests = confined_manifests(request, required=True)
        if manifests is None:
            raise ManifestError("a Kubernetes deploy needs the repository's manifests directory")
        if not request.images:
            raise ManifestError("nothing to deploy: no images")
        try:
            namespace = self.target.namespace_for(request.environment)
        except ClusterConfigError as exc:
            raise ManifestError(str(exc)) from exc
        objects = await render_overlay(manifests, request.environment, request.images)
        pin_namespace(objects, request.environment, namespace)
        placements = place_images(objects, request.images)
        label_objects(
            objects, placements, request.repository_slug, request.environment, request.commit_sha
        )
        validate_objects(objects, self.target.kubernetes_version)
        logger.info("rendered and validated %d objects", len(objects))

        timeout = min(request.timeout, self.target.rollout_timeout)
        polling = Polling(self.target.poll_interval, self.target.max_poll_interval)
        try:
            async with self.target.api_client() as client:
                api = KubeApi(client, self.target.field_manager, logger=logger)
                plan = await self._plan(api, objects, request.environment)
                previous = await _read_previous(api, plan)
                previous_images = _by_image_name(previous, placements)
                try:
                    for item in plan:
                        await api.apply(item.rtype, item.obj)
                    logger.info("applied %s", ", ".join(object_id(i.obj) for i in plan))
                    deployments = [i for i in plan if i.obj["kind"] == "Deployment"]
                    if deployments:
                        await wait_for_rollouts(
                            api,
                            deployments[0].rtype,
                            [(i.namespace, i.obj["metadata"]["name"]) for i in deployments],
                            timeout,
                            polling,
                        )
                except (ClusterError, RolloutFailedError, RolloutTimeoutError) as exc:
                    reason = f"deploy to {request.environment} failed: {exc}"
                    logger.error("%s", reason)
                    raise await _roll_back(api, plan, previous, previous_images, reason) from exc
        except (ClusterError, ClusterConfigError) as exc:
            # Only failures before anything was applied reach here.
            raise DeployError(
                f"deploy to {request.environment} failed before applying anything: {exc}",
                False,
                {},
            ) from exc
        url = service_url(plan)
        return DeployOutcome(
            url=url,
            previous_images=previous_images,
            detail=f"{len(plan)} objects applied; rolled out {', '.join(request.images)}",
        )

    async def _plan(
        self, api: KubeApi, objects: list[dict[str, Any]], environment: str
    ) -> list[_Planned]:
        """Resolve every kind before the first write: refuse, or apply all.

        Every object is already pinned to the environment's namespace; a cluster-scoped one
        is applied only when the target block allows its kind, and then without a namespace.
        """
        plan: list[_Planned] = []
        refused: list[str] = []
        for obj in objects:
            rtype = await api.resource_type(str(obj["apiVersion"]), str(obj["kind"]))
            metadata = obj["metadata"]
            if rtype.namespaced:
                plan.append(_Planned(obj, rtype, str(metadata["namespace"])))
            elif self.target.allows_cluster_scoped(rtype.api_version, rtype.kind):
                metadata.pop("namespace", None)
                plan.append(_Planned(obj, rtype, None))
            else:
                refused.append(object_id(obj))
        if refused:
            raise ManifestError(
                f"{environment}: cluster-scoped {', '.join(refused)} not allowed, nothing was "
                "applied (create them with the infrastructure code, or list the kind in the "
                "target block's cluster_scoped_kinds)"
            )
        return plan


def _labels(repository_slug: str, environment: str) -> dict[str, str]:
    return {
        MANAGED_BY: "gantry",
        REPOSITORY_LABEL: repository_slug,
        ENVIRONMENT_LABEL: environment,
    }


def _image_names(deployment: dict[str, Any]) -> dict[str, str]:
    """Container name -> gantry.toml image name, from the annotation Gantry writes."""
    raw = ((deployment.get("metadata") or {}).get("annotations") or {}).get(IMAGES_ANNOTATION)
    try:
        names = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}


async def _read_previous(api: KubeApi, plan: list[_Planned]) -> _Previous:
    previous = _Previous()
    for item in plan:
        if item.obj["kind"] != "Deployment":
            continue
        key = (item.namespace, str(item.obj["metadata"]["name"]))
        live = await api.get(item.rtype, item.namespace, key[1])
        if live is None:
            continue
        previous.images[key] = {
            str(container.get("name")): str(container.get("image", ""))
            for container in containers(live)
        }
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        previous.commits[key] = str(annotations.get(COMMIT_ANNOTATION, ""))
    return previous


def _by_image_name(previous: _Previous, placements: list[Placement]) -> dict[str, str]:
    found: dict[str, str] = {}
    for placement in placements:
        if placement.kind != "Deployment":
            continue
        for (_, name), images in previous.images.items():
            image = images.get(placement.container)
            if name == placement.name and image and placement.image_name not in found:
                found[placement.image_name] = image
    return found


async def _roll_back(
    api: KubeApi,
    plan: list[_Planned],
    previous: _Previous,
    previous_images: dict[str, str],
    reason: str,
) -> DeployError:
    """Re-apply the images that ran before; the error to raise says how that went."""
    logger = step_logger("deploy")
    restored: list[str] = []
    problems: list[str] = []
    for item in plan:
        key = (item.namespace, str(item.obj["metadata"]["name"]))
        if item.obj["kind"] != "Deployment" or key not in previous.images:
            continue
        body = copy.deepcopy(item.obj)
        for container in containers(body):
            old = previous.images[key].get(str(container.get("name")))
            if old:
                container["image"] = old
        annotations = body["metadata"].setdefault("annotations", {})
        if previous.commits.get(key):
            annotations[COMMIT_ANNOTATION] = previous.commits[key]
        else:
            annotations.pop(COMMIT_ANNOTATION, None)
        try:
            await api.apply(item.rtype, body)
            restored.append(object_id(item.obj))
        except ClusterError as exc:
            problems.append(f"{object_id(item.obj)}: {exc}")
    if problems:
        logger.error("rollback incomplete: %s", "; ".join(problems))
        return DeployError(
            f"{reason}; rollback FAILED, the environment may be broken: {'; '.join(problems)}",
            rolled_back=False,
            previous_images=previous_images,
        )
    if not restored:
        return DeployError(
            f"{reason}; nothing ran before, so there was nothing to roll back to "
            "(the failed version is left in place for inspection)",
            rolled_back=False,
            previous_images={},
        )
    logger.warning("rolled back %s to the previous images", ", ".join(restored))
    return DeployError(
        f"{reason}; rolled back {', '.join(restored)} to the previous images "
        f"({', '.join(f'{k}={v}' for k, v in sorted(previous_images.items()))})",
        rolled_back=True,
        previous_images=previous_images,
    )


def service_url(plan: list[_Planned]) -> str | None:
    """An Ingress host if there is one, else the first Service's in-cluster address."""
    for item in plan:
        if item.obj["kind"] != "Ingress":
            continue
        spec = item.obj.get("spec") or {}
        tls_hosts = {host for tls in spec.get("tls") or [] for host in tls.get("hosts") or []}
        for rule in spec.get("rules") or []:
            host = rule.get("host")
            if host:
                return f"{'https' if host in tls_hosts else 'http'}://{host}"
    for item in plan:
        if item.obj["kind"] != "Service":
            continue
        name = item.obj["metadata"]["name"]
        ports = (item.obj.get("spec") or {}).get("ports") or []
        port = int(ports[0].get("port", 80)) if ports else 80
        suffix = "" if port == 80 else f":{port}"
        return f"http://{name}.{item.namespace}.svc{suffix}"
    return None
