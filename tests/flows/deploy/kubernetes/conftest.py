"""An emulated Kubernetes API server on loopback, and blocks that point at it like a user's.

kmock's ``KubernetesEmulator`` keeps objects in memory and serves them over real HTTP. It has
no controllers, and it treats every PATCH as a merge into an existing object, so
``ApiServerEmulator`` adds the two things the API server itself (not a controller) does that
a deploy relies on: server-side apply creates a missing object, and ``metadata.generation``
goes up when a spec changes. Deployment status is a controller's job: ``RolloutController``
plays it in the test, deciding per image whether a rollout succeeds, stalls or fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp.web
import kmock
import pytest
import yaml
from kmock import KubernetesEmulator, KubernetesError, Server, action
from typing_extensions import override

from blocks.cluster import KubernetesClusterConfig, KubernetesTarget
from flows.deploy.kubernetes.target import KubernetesDeployTarget

DEPLOYMENTS = "apps/v1/deployments"
EMULATOR_TOKEN = "emulator-token-not-a-secret"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ApiServerEmulator(KubernetesEmulator):
    """kmock's emulator plus apply-creates and generation bumps, as a real API server does."""

    # A test's fault injection: given a request, an error to answer with instead, or None.
    fault: Callable[[Any], KubernetesError | None] | None = None

    @override
    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        error = self.fault(request) if self.fault is not None else None
        if error is not None:
            raise error
        key = None
        before: Any = None
        if request.resource is not None and request.action == action.UPDATE and request.name:
            key = (request.resource, request.namespace, request.name)
            exists = key in self.objects and not self.objects[key].deleted
            content_type = request.headers.get("Content-Type", "")
            if not exists and content_type.startswith("application/apply-patch"):
                created = copy.deepcopy(request.data)
                created.setdefault("metadata", {})["generation"] = 1
                self.objects[key] = created
            elif exists:
                before = copy.deepcopy(self.objects[key].raw.get("spec"))
        response = await super()._handle(request)
        if before is not None and key is not None and not self.objects[key].deleted:
            live = self.objects[key]
            if live.raw.get("spec") != before:
                generation = int(live.raw.get("metadata", {}).get("generation") or 1)
                live.patch({"metadata": {"generation": generation + 1}})
        return response

    def received(self) -> list[Any]:
        """Every request the emulator served, oldest first."""
        return list(iter(self))

    def writes(self) -> list[Any]:
        return [r for r in self.received() if str(r.method.value) in WRITE_METHODS]

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        raw: dict[str, Any] = self.objects[DEPLOYMENTS, namespace, name].raw
        return raw


@dataclass
class RolloutController:
    """Plays the Deployment controller: moves status for each new generation it sees.

    A generation whose images are all in ``healthy`` becomes available; any other one
    ``stall``s (new pods never become available) or ``fail``s (progress deadline exceeded).
    """

    emulator: ApiServerEmulator
    healthy: set[str] = field(default_factory=set)
    otherwise: Literal["stall", "fail"] = "stall"
    seen: list[tuple[str, int, str]] = field(default_factory=list)

    def step(self) -> None:
        for (resource, _namespace, name), obj in list(self.emulator.objects.items()):
            if resource != kmock.resource("apps", "v1", "deployments") or obj.deleted:
                continue
            raw = obj.raw
            generation = int(raw.get("metadata", {}).get("generation") or 1)
            status = raw.get("status") or {}
            if int(status.get("observedGeneration") or 0) >= generation:
                continue
            replicas = int(raw["spec"].get("replicas", 1))
            spec = raw["spec"]["template"]["spec"]
            images = {c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}
            if images <= self.healthy:
                outcome = "available"
                new_status = {
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                    "conditions": [
                        {
                            "type": "Available",
                            "status": "True",
                            "reason": "MinimumReplicasAvailable",
                        },
                        {
                            "type": "Progressing",
                            "status": "True",
                            "reason": "NewReplicaSetAvailable",
                        },
                    ],
                }
            elif self.otherwise == "stall":
                outcome = "stalled"
                new_status = {
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "availableReplicas": 0,
                    "conditions": [
                        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
                    ],
                }
            else:
                outcome = "failed"
                new_status = {
                    "observedGeneration": generation,
                    "replicas": replicas,
                    "updatedReplicas": 0,
                    "availableReplicas": 0,
                    "conditions": [
                        {
                            "type": "Progressing",
                            "status": "False",
                            "reason": "ProgressDeadlineExceeded",
                            "message": f'ReplicaSet "{name}-new" has timed out progressing.',
                        },
                    ],
                }
            obj.patch({"status": None})
            obj.patch({"status": new_status})
            self.seen.append((name, generation, outcome))

    async def run(self, interval: float = 0.01) -> None:
        while True:
            self.step()
            await asyncio.sleep(interval)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def emulator() -> AsyncIterator[ApiServerEmulator]:
    """The emulated API server, listening on a free loopback port."""
    async with ApiServerEmulator() as handler, Server(handler, host="127.0.0.1"):
        with warnings.catch_warnings():
            # kmock reads its bundled API discovery with a deprecated importlib call.
            warnings.simplefilter("ignore", DeprecationWarning)
            handler.resources.load_bundled()
        yield handler


def write_kubeconfig(
    emulator: ApiServerEmulator, path: Path, user: str, namespace: str | None = None
) -> Path:
    """A kubeconfig file for the emulator, as ``kubectl config`` would write one."""
    url = str(emulator.servers[0].url).rstrip("/")
    context: dict[str, str] = {"cluster": "emulator", "user": user}
    if namespace is not None:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": user, "user": {"token": EMULATOR_TOKEN}}],
        "contexts": [{"name": "emulator", "context": context}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def kubeconfig(emulator: ApiServerEmulator, tmp_path: Path) -> Path:
    return write_kubeconfig(emulator, tmp_path / "kubeconfig.yaml", "deployer", "default")


@pytest.fixture
def target_block(kubeconfig: Path) -> KubernetesTarget:
    """The block a user would save for this cluster, with quick polling for tests."""
    return KubernetesTarget(
        cluster_config=KubernetesClusterConfig.from_file(kubeconfig, context_name="emulator"),
        namespaces={"staging": "staging"},
        rollout_timeout=30.0,
        poll_interval=0.02,
        max_poll_interval=0.1,
    )


@pytest.fixture
def deploy_target(target_block: KubernetesTarget) -> KubernetesDeployTarget:
    return KubernetesDeployTarget(target_block)


@pytest.fixture
async def controller(emulator: ApiServerEmulator) -> AsyncIterator[RolloutController]:
    """The emulated Deployment controller, running beside the test until it ends."""
    playing = RolloutController(emulator)
    task = asyncio.create_task(playing.run())
    try:
        yield playing
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def manifests() -> Iterator[Path]:
    """The sample service's kustomize tree (read only: renders never write into it)."""
    yield Path(__file__).resolve().parents[4] / "examples" / "sample-service" / "deploy"
