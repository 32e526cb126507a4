"""The Kubernetes step runner against an emulated Kubernetes API server (kmock, over real HTTP).

The emulator has no kubelet: nothing runs in its Pods. The test plays the kubelet, moving a
Pod's container statuses and serving its log, and checks that the runner reports what that
state says, and that the Pod spec which reached the emulator has every restriction.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest
from kmock import Server
from typing_extensions import override

from blocks.cluster import KubernetesClusterConfig, KubernetesTarget
from flows.steps.sandbox.base import Limits, SandboxError, StepSpec
from flows.steps.sandbox.kubernetes import (
    GANTRY_LABELS,
    NETWORK_LABEL,
    KubernetesRunner,
    KubernetesSandboxSettings,
    pod_manifest,
)
from tests.flows.deploy.kubernetes.conftest import (
    ApiServerEmulator,
    write_kubeconfig,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
NAMESPACE = "gantry-steps"
CLONE_URL = "https://github.com/acme/api.git"
LOG = logging.getLogger("gantry.test.k8s")
RUN_LABELS = {"gantry.flow-run-id": "7d0c6f3e-2b7a-4e43-9a3b-1f1d2c3b4a5e"}


class PodEmulator(ApiServerEmulator):
    """The emulated API server, plus each Pod's log as the test says the step printed it."""

    logs: dict[str, str]

    @override
    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.subresource == "log":
            return aiohttp.web.Response(text=self.logs.get(str(request.name), ""))
        return await super()._handle(request)

    def pods(self) -> dict[str, dict[str, Any]]:
        return {
            name: obj.raw
            for (resource, _namespace, name), obj in list(self.objects.items())
            if str(getattr(resource, "plural", resource)).endswith("pods") and not obj.deleted
        }

    def set_status(self, name: str, status: dict[str, Any]) -> None:
        for (_resource, _namespace, found), obj in self.objects.items():
            if found == name and not obj.deleted:
                obj.patch({"status": status})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def emulator() -> AsyncIterator[PodEmulator]:
    async with PodEmulator() as handler, Server(handler, host="127.0.0.1"):
        handler.logs = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            handler.resources.load_bundled()
        yield handler


@pytest.fixture
def runner(emulator: PodEmulator, tmp_path: Path) -> KubernetesRunner:
    path = write_kubeconfig(emulator, tmp_path / "kubeconfig.yaml", "worker")
    cluster = KubernetesTarget(
        cluster_config=KubernetesClusterConfig.from_file(path, context_name="emulator")
    )
    settings = KubernetesSandboxSettings(
        namespace=NAMESPACE, poll_interval=0.02, startup_seconds=30
    )
    return KubernetesRunner(cluster, settings)


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, str]:
    """A checkout as the trusted side leaves it: one commit, fetched from the Git host."""
    path = tmp_path / "checkout"
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "c"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    # What `git fetch URL SHA` records; a token in the URL must never reach the Pod.
    fetched_from = "https://x-access-token:ghs_notreal@github.com/acme/api.git"
    (path / ".git" / "FETCH_HEAD").write_text(f"{sha}\t\t'{sha}' of {fetched_from}\n")
    return path, sha


def step(workspace: Path, **overrides: Any) -> StepSpec:
    fields: dict[str, Any] = {
        "argv": ("python3", "-m", "unittest", "-v"),
        "workspace": workspace,
        "timeout": 60.0,
        "env": {"SERVICE_MODE": "test"},
        "limits": Limits(cpus=1.5, memory_mb=1024, processes=256),
        "labels": RUN_LABELS,
    }
    fields.update(overrides)
    return StepSpec(**fields)


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
    return found


def the_pod(emulator: PodEmulator) -> Callable[[], tuple[str, dict[str, Any]] | None]:
    def check() -> tuple[str, dict[str, Any]] | None:
        pods = emulator.pods()
        return next(iter(pods.items())) if pods else None

    return check


def running() -> dict[str, Any]:
    return {
        "phase": "Running",
        "containerStatuses": [
            {"name": "step", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}
        ],
    }


def exited(code: int) -> dict[str, Any]:
    terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
    return {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [{"name": "step", "state": {"terminated": terminated}}],
    }


async def test_the_pod_that_reaches_the_api_server_has_every_restriction(
    emulator: PodEmulator, runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    path, sha = workspace
    task = asyncio.create_task(runner.run(step(path), LOG))
    name, pod = await until(the_pod(emulator))
    emulator.set_status(name, exited(0))
    await task

    assert pod["metadata"]["namespace"] == NAMESPACE
    labels = pod["metadata"]["labels"]
    assert labels.items() >= {**RUN_LABELS, **GANTRY_LABELS}.items()
    assert labels[NETWORK_LABEL] == "none"
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert 60 < spec["activeDeadlineSeconds"] <= 60 + 30
    assert not (spec["hostNetwork"] or spec["hostPID"] or spec["hostIPC"])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*spec["initContainers"], *spec["containers"]]:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        assert security["allowPrivilegeEscalation"] is False
        assert security["privileged"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/workspace", "/tmp"}
        assert "limits" in container["resources"]
    assert {v["name"]: v for v in spec["volumes"]}["tmp"]["emptyDir"]["sizeLimit"]

    (main,) = spec["containers"]
    assert main["command"] == ["python3", "-m", "unittest", "-v"]
    assert main["workingDir"] == "/workspace"
    assert main["resources"]["limits"] == {"cpu": "1500m", "memory": "1024Mi"}
    assert main["resources"]["requests"] == main["resources"]["limits"]
    env = {item["name"]: item["value"] for item in main["env"]}
    assert env["CI"] == "true" and env["SERVICE_MODE"] == "test"
    assert not any("TOKEN" in key or "PREFECT" in key for key in env)

    fetch = {c["name"]: c for c in spec["initContainers"]}["git-fetch"]["command"]
    assert fetch[-2:] == [CLONE_URL, sha]
    assert "ghs_notreal" not in str(pod)


async def test_exit_code_and_log_lines_are_the_step_containers(
    emulator: PodEmulator,
    runner: KubernetesRunner,
    workspace: tuple[Path, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = LOG
    task = asyncio.create_task(runner.run(step(workspace[0]), logger, prefix="unit: "))
    name, _ = await until(the_pod(emulator))
    emulator.logs[name] = "test_a ... ok\ntest_b ... FAIL\nFAILED (failures=1)\n"
    with caplog.at_level("INFO", logger="gantry.test.k8s"):
        emulator.set_status(name, running())
        await asyncio.sleep(0.1)
        emulator.set_status(name, exited(3))
        result = await task
    assert result.exit_code == 3 and not result.ok and not result.timed_out
    assert result.tail.splitlines() == ["test_a ... ok", "test_b ... FAIL", "FAILED (failures=1)"]
    assert "unit: test_b ... FAIL" in caplog.messages
    assert emulator.pods() == {}, "the pod is deleted once the step ends"


async def test_a_step_that_passes_reports_success(
    emulator: PodEmulator, runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    task = asyncio.create_task(runner.run(step(workspace[0]), LOG))
    name, _ = await until(the_pod(emulator))
    emulator.set_status(name, exited(0))
    assert (await task).ok


async def test_a_step_past_its_timeout_is_reported_and_its_pod_deleted(
    emulator: PodEmulator, runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    spec = step(workspace[0], timeout=0.3)
    task = asyncio.create_task(runner.run(spec, LOG))
    name, _ = await until(the_pod(emulator))
    emulator.set_status(name, running())
    result = await task
    assert result.timed_out and result.exit_code is None
    assert emulator.pods() == {}


async def test_a_cancelled_step_deletes_its_pod(
    emulator: PodEmulator, runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    task = asyncio.create_task(runner.run(step(workspace[0]), LOG))
    name, _ = await until(the_pod(emulator))
    emulator.set_status(name, running())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: emulator.pods() == {})


async def test_a_failed_clone_is_a_sandbox_failure_not_an_exit_code(
    emulator: PodEmulator, runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    task = asyncio.create_task(runner.run(step(workspace[0]), LOG))
    name, _ = await until(the_pod(emulator))
    failed = {"name": "git-fetch", "state": {"terminated": {"exitCode": 128}}}
    emulator.set_status(name, {"phase": "Pending", "initContainerStatuses": [failed]})
    result = await task
    assert result.error is not None and "git-fetch" in result.error
    assert emulator.pods() == {}


async def test_opting_into_the_network_labels_the_pod_for_its_policy(
    emulator: PodEmulator, runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    spec = step(workspace[0], network="target", target_url="http://api.staging.svc")
    task = asyncio.create_task(runner.run(spec, LOG))
    name, pod = await until(the_pod(emulator))
    emulator.set_status(name, exited(0))
    await task
    assert pod["metadata"]["labels"][NETWORK_LABEL] == "target"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["GANTRY_TARGET_URL"] == "http://api.staging.svc"


async def test_a_checkout_from_a_host_not_allowed_is_refused(
    runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    path, sha = workspace
    (path / ".git" / "FETCH_HEAD").write_text(f"{sha}\t\t'{sha}' of file:///srv/repo\n")
    with pytest.raises(SandboxError, match="clones only from"):
        await runner.run(step(path), LOG)


async def test_reap_deletes_the_labelled_pods_and_only_those(
    emulator: PodEmulator, runner: KubernetesRunner, workspace: tuple[Path, str]
) -> None:
    # Leftovers of a worker that died between creating its pods and deleting them.
    url = str(emulator.servers[0].url).rstrip("/")
    left = {
        "gantry-step-a": RUN_LABELS,
        "gantry-step-b": RUN_LABELS,
        "gantry-step-c": {"gantry.flow-run-id": "another-run"},
    }
    async with aiohttp.ClientSession() as http:
        for name, labels in left.items():
            pod = pod_manifest(
                step(workspace[0], labels=labels),
                name,
                NAMESPACE,
                CLONE_URL,
                workspace[1],
                runner.settings,
            )
            async with http.post(f"{url}/api/v1/namespaces/{NAMESPACE}/pods", json=pod) as answer:
                assert answer.status < 300
        async with http.post(
            f"{url}/api/v1/namespaces/{NAMESPACE}/pods",
            json={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "not-gantrys"}},
        ) as answer:
            assert answer.status < 300
    assert await runner.reap(RUN_LABELS) == ["gantry-step-a", "gantry-step-b"]
    assert set(emulator.pods()) == {"gantry-step-c", "not-gantrys"}
    assert await runner.reap() == ["gantry-step-c"]
    assert set(emulator.pods()) == {"not-gantrys"}
