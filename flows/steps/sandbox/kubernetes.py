"""The Kubernetes step runner: each step is a Pod of its own in a locked-down steps namespace.

The Pod gets no service-account token, runs as a non-root user under the ``restricted`` Pod
Security profile (no privilege escalation, no capabilities, the RuntimeDefault seccomp profile,
a read-only root filesystem with emptyDir ``/tmp`` and ``/workspace``), has CPU and memory
limits, carries the flow run's labels plus Gantry's own (so ``reap`` finds leftovers), and an
``activeDeadlineSeconds`` so that the cluster kills it even if the worker dies. The steps
namespace's NetworkPolicies (``infra/k8s/base/steps-*.yaml``) decide what it can reach, by its
``gantry.dev/network`` label: nothing, the environment under test, or the outside.

The checkout reaches the Pod by a fresh clone of the exact commit, in init containers (one argv
each, no shell): ``git init``, ``git fetch --depth=1 URL SHA``, ``git checkout --detach SHA``.
The URL is the one the trusted checkout fetched the commit from (git records it in the
workspace's ``FETCH_HEAD``), accepted only on an allowed Git host and stripped of any
credentials; nothing secret is in the Pod. So only committed content reaches the step: what
earlier steps wrote into the worker's workspace does not.

Logs are streamed line by line into the step logger; the exit code is the step container's.
The Pod is deleted when the step ends, times out or is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import load_incluster_config
from kubernetes_asyncio.config.config_exception import ConfigException
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from blocks.cluster import ClusterConfigError, KubernetesClusterConfig, KubernetesTarget
from flows.deploy.kubernetes.api import ApiCallError, ClusterError, ClusterUnreachableError
from flows.logs import StepLogger
from flows.steps.proc import TAIL_LINES, ProcResult
from flows.steps.sandbox.base import SandboxError, StepSpec

__all__ = ["KubernetesRunner", "KubernetesSandboxSettings", "pod_manifest"]

SANDBOX_LABEL = "gantry.dev/sandbox"
NETWORK_LABEL = "gantry.dev/network"
MANAGED_BY = "app.kubernetes.io/managed-by"
GANTRY_LABELS = {MANAGED_BY: "gantry", SANDBOX_LABEL: "step"}
STEP_CONTAINER = "step"
WORKSPACE = "/workspace"
# A fixed, unprivileged identity: images that default to root still run as nobody-like.
STEP_UID = 65532
REQUEST_TIMEOUT = 30.0
_LABEL_VALUE_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class KubernetesSandboxSettings(BaseSettings):
    """Set by whoever deploys the worker (``GANTRY_SANDBOX_KUBERNETES_*``), never by a run."""

    model_config = SettingsConfigDict(env_prefix="GANTRY_SANDBOX_KUBERNETES_", extra="ignore")

    # A Kubernetes Cluster Config block (prefect-kubernetes); unset: the worker's own
    # in-cluster service account, which RBAC lets act on pods in the steps namespace only.
    cluster_block: str | None = None
    namespace: str = Field(default="gantry-steps", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    # The default toolchain: Python 3, git and the usual build tools.
    default_image: str = "docker.io/library/python:3.12-bookworm"
    git_image: str = "docker.io/library/python:3.12-bookworm"
    # Clone URLs must start with one of these (the configured Git host).
    git_hosts: tuple[str, ...] = ("https://github.com/",)
    # Time to schedule the Pod, pull images and clone, before the step's own timeout starts.
    startup_seconds: float = Field(default=300.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    workspace_size: str = "4Gi"
    tmp_size: str = "1Gi"


def label_value(text: str) -> str:
    """A valid label value (63 characters of ``[A-Za-z0-9_.-]``, alphanumeric at both ends)."""
    return _LABEL_VALUE_UNSAFE.sub("-", text)[:63].strip("-_.") or "unknown"


def pod_labels(spec: StepSpec) -> dict[str, str]:
    labels = {key: label_value(value) for key, value in spec.labels.items()}
    labels.update(GANTRY_LABELS)
    labels[NETWORK_LABEL] = spec.network
    return labels


def _security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": STEP_UID,
        "runAsGroup": STEP_UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _git_container(name: str, image: str, argv: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "command": [
            "git",
            "-c",
            f"safe.directory={WORKSPACE}",
            "-c",
            "advice.detachedHead=false",
            *argv,
        ],
        "env": [
            {"name": "HOME", "value": "/tmp"},  # noqa: S108 - the pod's own emptyDir
            {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
            {"name": "GIT_CONFIG_NOSYSTEM", "value": "1"},
            # Only the transport the clone URL was checked for; never ext:: or file://.
            {"name": "GIT_ALLOW_PROTOCOL", "value": "https"},
        ],
        "securityContext": _security_context(),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - the pod's own emptyDir
        ],
    }


def pod_manifest(
    spec: StepSpec,
    name: str,
    namespace: str,
    clone_url: str,
    sha: str,
    settings: KubernetesSandboxSettings,
) -> dict[str, Any]:
    """The Pod for one step; every field that isolates it is set here, none left to defaults."""
    env = {**spec.env, "CI": "true", "HOME": "/tmp"}  # noqa: S108 - the pod's own emptyDir
    if spec.target_url and spec.network in ("target", "outside"):
        env["GANTRY_TARGET_URL"] = spec.target_url
    # The emptyDir mount point belongs to root; git inside the step would refuse it otherwise.
    env.update(
        {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
    )
    cpu = f"{max(1, round(spec.limits.cpus * 1000))}m"
    memory = f"{spec.limits.memory_mb}Mi"
    image = spec.image or settings.default_image
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": pod_labels(spec)},
        "spec": {
            "restartPolicy": "Never",
            # The cluster ends the Pod even when the worker that made it is gone.
            "activeDeadlineSeconds": math.ceil(spec.timeout + settings.startup_seconds),
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            # No environment variables naming every Service of the namespace.
            "enableServiceLinks": False,
            "hostNetwork": False,
            "hostPID": False,
            "hostIPC": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": STEP_UID,
                "runAsGroup": STEP_UID,
                "fsGroup": STEP_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [
                _git_container("git-init", settings.git_image, ["init", "--quiet", WORKSPACE]),
                _git_container(
                    "git-fetch",
                    settings.git_image,
                    ["-C", WORKSPACE, "fetch", "--quiet", "--depth=1", "--no-tags", clone_url, sha],
                ),
                _git_container(
                    "git-checkout",
                    settings.git_image,
                    ["-C", WORKSPACE, "checkout", "--quiet", "--detach", sha],
                ),
            ],
            "containers": [
                {
                    "name": STEP_CONTAINER,
                    "image": image,
                    "command": list(spec.argv),  # argv as declared: no shell in between
                    "workingDir": WORKSPACE,
                    "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                    "securityContext": _security_context(),
                    "resources": {
                        "requests": {"cpu": cpu, "memory": memory},
                        "limits": {"cpu": cpu, "memory": memory},
                    },
                    "volumeMounts": [
                        {"name": "workspace", "mountPath": WORKSPACE},
                        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - its own emptyDir
                    ],
                }
            ],
            "volumes": [
                {"name": "workspace", "emptyDir": {"sizeLimit": settings.workspace_size}},
                {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size}},
            ],
        },
    }


async def _git_output(workspace: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git",
        "-C",
        str(workspace),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SandboxError(f"cannot read the checkout's commit: git {args[0]} failed")
    return out.decode().strip()


async def checkout_source(workspace: Path, git_hosts: tuple[str, ...]) -> tuple[str, str]:
    """The clone URL (no credentials) and commit of the trusted checkout in ``workspace``."""
    sha = await _git_output(workspace, "rev-parse", "HEAD")
    if not _SHA.match(sha):
        raise SandboxError(f"the checkout's HEAD is not a commit: {sha[:80]!r}")
    fetch_head = Path(workspace, ".git", "FETCH_HEAD")
    try:
        first = fetch_head.read_text().splitlines()[0]
    except (OSError, IndexError) as exc:
        raise SandboxError("the checkout records no URL it was fetched from") from exc
    url = first.rsplit(" of ", 1)[-1].strip()
    parts = urlsplit(url)
    # Credentials a URL may carry stay on the worker: the Pod gets host and path only.
    clean = urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
    if parts.port:
        clean = urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", ""))
    if parts.scheme != "https" or not any(clean.startswith(host) for host in git_hosts):
        raise SandboxError(
            f"the Kubernetes runner clones only from {', '.join(git_hosts)}; this checkout "
            f"came from {clean or 'a local path'}"
        )
    return clean, sha


class _Pods:
    """Create, read, follow and delete Pods in one namespace; ``ClusterError`` on failure."""

    def __init__(self, client: ApiClient, namespace: str) -> None:
        self.client = client
        self.base = f"/api/v1/namespaces/{namespace}/pods"

    async def _call(self, method: str, path: str, **options: Any) -> Any:
        try:
            return await self.client.call_api(
                path,
                method,
                query_params=options.pop("query", []),
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=options.pop("body", None),
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=options.pop("preload", True),
                _request_timeout=options.pop("timeout", REQUEST_TIMEOUT),
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            message = f"{method} {path} answered {status} {exc.reason or ''}"
            raise ApiCallError(message, status) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClusterUnreachableError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def create(self, pod: dict[str, Any]) -> None:
        await self._call("POST", self.base, body=pod)

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            found = await self._call("GET", f"{self.base}/{name}")
        except ApiCallError as exc:
            if exc.status == 404:
                return None
            raise
        return found if isinstance(found, dict) else None

    async def select(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        found = await self._call("GET", self.base, query=[("labelSelector", selector)])
        items = found.get("items", []) if isinstance(found, dict) else []
        # Checked here too: the selection decides what gets deleted.
        return [
            item
            for item in items
            if all(
                ((item.get("metadata") or {}).get("labels") or {}).get(k) == v
                for k, v in labels.items()
            )
        ]

    async def delete(self, name: str) -> None:
        with contextlib.suppress(ApiCallError):  # already gone is as good as deleted
            await self._call(
                "DELETE", f"{self.base}/{name}", body={"gracePeriodSeconds": 0}, timeout=10
            )

    async def log_lines(self, name: str) -> AsyncIterator[str]:
        """The step container's output, following it until the container ends."""
        response = await self._call(
            "GET",
            f"{self.base}/{name}/log",
            query=[("container", STEP_CONTAINER), ("follow", "true")],
            preload=False,
            timeout=None,
        )
        try:
            async for raw in response.content:
                yield raw.decode("utf-8", "replace").rstrip("\r\n")
        finally:
            response.release()


def _step_state(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == STEP_CONTAINER:
            state: dict[str, Any] = status.get("state") or {}
            return state
    return {}


def _failed_before_start(pod: dict[str, Any]) -> str | None:
    """Why the step can never start (a failed clone, a deadline), or None."""
    status = pod.get("status") or {}
    for init in status.get("initContainerStatuses") or []:
        ended = (init.get("state") or {}).get("terminated")
        if ended and int(ended.get("exitCode", 0)) != 0:
            return f"checkout in the pod failed ({init.get('name')}: exit {ended.get('exitCode')})"
    if status.get("phase") == "Failed" and not _step_state(pod).get("terminated"):
        return f"pod failed before the step ran: {status.get('reason') or 'unknown reason'}"
    return None


class KubernetesRunner:
    """A ``StepRunner`` that runs each step as its own Pod (see the module's docstring)."""

    name = "kubernetes"

    def __init__(
        self,
        cluster: KubernetesTarget | None = None,
        settings: KubernetesSandboxSettings | None = None,
    ) -> None:
        self.cluster = cluster
        self.settings = settings or KubernetesSandboxSettings()

    @contextlib.asynccontextmanager
    async def _pods(self) -> AsyncIterator[_Pods]:
        try:
            if self.cluster is None and self.settings.cluster_block:
                config = await KubernetesClusterConfig.aload(self.settings.cluster_block)
                self.cluster = KubernetesTarget(cluster_config=config)
            if self.cluster is not None:
                async with self.cluster.api_client() as client:
                    yield _Pods(client, self.settings.namespace)
                return
            configuration = Configuration()
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (ClusterConfigError, ConfigException, ValueError) as exc:
            raise SandboxError(f"no Kubernetes cluster to run steps in: {exc}") from exc
        async with ApiClient(configuration) as client:
            yield _Pods(client, self.settings.namespace)

    async def run(self, spec: StepSpec, logger: StepLogger, prefix: str = "") -> ProcResult:
        url, sha = await checkout_source(spec.workspace, self.settings.git_hosts)
        name = f"gantry-step-{secrets.token_hex(6)}"
        pod = pod_manifest(spec, name, self.settings.namespace, url, sha, self.settings)
        started = time.monotonic()
        try:
            async with self._pods() as pods:
                try:
                    await pods.create(pod)
                except ClusterError as exc:
                    raise SandboxError(f"cannot create the step's pod: {exc}") from exc
                try:
                    return await self._follow(pods, name, spec, logger, prefix, started)
                finally:
                    # Done, timed out, failed or cancelled: the Pod goes, shielded so that a
                    # cancellation cannot interrupt the deletion itself.
                    await asyncio.shield(pods.delete(name))
        except ClusterError as exc:
            raise SandboxError(f"lost the step's pod {name}: {exc}") from exc

    async def _follow(
        self,
        pods: _Pods,
        name: str,
        spec: StepSpec,
        logger: StepLogger,
        prefix: str,
        started: float,
    ) -> ProcResult:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        startup_deadline = started + self.settings.startup_seconds
        running_since: float | None = None
        streaming: asyncio.Task[None] | None = None

        async def stream() -> None:
            with contextlib.suppress(ClusterError, aiohttp.ClientError):
                async for line in pods.log_lines(name):
                    tail.append(line)
                    logger.info("%s%s", prefix, line)

        def result(code: int | None, **extra: Any) -> ProcResult:
            return ProcResult(
                spec.argv, code, time.monotonic() - started, "\n".join(tail) + "\n", **extra
            )

        try:
            while True:
                live = await pods.get(name)
                now = time.monotonic()
                if live is None:
                    return result(None, error="sandbox: the step's pod was deleted by someone else")
                state = _step_state(live)
                if ("running" in state or "terminated" in state) and streaming is None:
                    running_since = now
                    streaming = asyncio.create_task(stream())
                ended = state.get("terminated")
                if ended is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(streaming), 5.0)  # type: ignore[arg-type]
                    return result(int(ended.get("exitCode", 1)))
                reason = _failed_before_start(live)
                if reason is not None:
                    logger.error("%s%s", prefix, reason)
                    return result(None, error=f"sandbox: {reason}")
                if running_since is None and now > startup_deadline:
                    return result(None, error="sandbox: the step's pod did not start in time")
                if running_since is not None and now - running_since > spec.timeout:
                    logger.error("%stimed out after %.1f s; deleting its pod", prefix, spec.timeout)
                    return result(None, timed_out=True)
                await asyncio.sleep(self.settings.poll_interval)
        finally:
            if streaming is not None and not streaming.done():
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await streaming

    async def reap(self, labels: Mapping[str, str] | None = None) -> list[str]:
        wanted = {**{k: label_value(v) for k, v in (labels or {}).items()}, **GANTRY_LABELS}
        try:
            async with self._pods() as pods:
                found = await pods.select(wanted)
                names = sorted(str(item["metadata"]["name"]) for item in found)
                for name in names:
                    await pods.delete(name)
        except ClusterError as exc:
            raise SandboxError(f"cannot reap step pods: {exc}") from exc
        return names
