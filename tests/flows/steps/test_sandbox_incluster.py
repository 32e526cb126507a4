"""Without a Cluster Config block, the step runner acts as the flow run's own service account.

A flow-run Pod gets what every Pod with a service account gets: ``KUBERNETES_SERVICE_HOST`` and
``KUBERNETES_SERVICE_PORT`` in its environment, and the account's token and the cluster's CA
certificate where the kubelet mounts them. The test sets up exactly that: the emulated API
server (kmock) serves HTTPS with a certificate for 127.0.0.1 signed by that CA, and answers
401 to any call without the account's token, as the real API server does.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import RawTestServer
from cryptography import x509
from kmock import KubernetesError, Server
from kubernetes_asyncio.config import incluster_config
from typing_extensions import override

from flows.steps.sandbox.base import SandboxError
from flows.steps.sandbox.kubernetes import (
    GANTRY_LABELS,
    KubernetesRunner,
    KubernetesSandboxSettings,
)
from tests.fakes.tls import write_test_ca
from tests.flows.deploy.kubernetes.conftest import ApiServerEmulator

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
NAMESPACE = "gantry-steps"
RUN_LABELS = {"gantry.flow-run-id": "7d0c6f3e-2b7a-4e43-9a3b-1f1d2c3b4a5e"}
TOKEN = "flow-run-service-account-token-not-a-secret"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"


@dataclass(frozen=True)
class Tls:
    """A CA certificate (PEM), and a server context whose certificate that CA signed."""

    ca_pem: bytes
    server: ssl.SSLContext


def make_tls(directory: Path, common_name: str) -> Tls:
    """A cluster CA and an API server certificate for 127.0.0.1, as ``kubeadm`` would make."""
    ca_file, cert_file, key_file = write_test_ca(
        directory,
        common_name,
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        "kube-apiserver",
        lifetime=datetime.timedelta(hours=1),
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return Tls(ca_pem=ca_file.read_bytes(), server=server)


def tls_server(context: ssl.SSLContext) -> type[RawTestServer]:
    """aiohttp's test server, listening with TLS only (the API server has no plain port)."""

    class TlsServer(RawTestServer):
        @override
        async def start_server(
            self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
        ) -> None:
            await super().start_server(loop=loop, ssl=context, **kwargs)

    return TlsServer


def require_token(request: Any) -> KubernetesError | None:
    """What the API server does with a call that does not carry the account's token."""
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return KubernetesError(status=401, reason="Unauthorized", message="Unauthorized")
    return None


@dataclass(frozen=True)
class Cluster:
    emulator: ApiServerEmulator
    url: str
    tls: Tls


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    tls = make_tls(tmp_path / "pki", "kubernetes")
    server_cls = tls_server(tls.server)
    async with (
        ApiServerEmulator() as handler,
        Server(handler, host="127.0.0.1", server_cls=server_cls) as server,
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            handler.resources.load_bundled()
        handler.fault = require_token
        yield Cluster(handler, str(server.url).rstrip("/"), tls)


@pytest.fixture
def service_account(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The flow-run Pod's service account: its environment and the kubelet's mounted files.

    Returns the mounted CA file (the cluster's CA unless a test writes another).
    """
    mount = tmp_path / "serviceaccount"
    mount.mkdir()
    (mount / "token").write_text(TOKEN)
    ca_file = mount / "ca.crt"
    ca_file.write_bytes(cluster.tls.ca_pem)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(mount / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca_file))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", cluster.url.rsplit(":", 1)[1])
    return ca_file


def runner() -> KubernetesRunner:
    """The runner as a flow run builds it when no Cluster Config block is configured."""
    settings = KubernetesSandboxSettings(namespace=NAMESPACE, cluster_block=None)
    return KubernetesRunner(None, settings)


async def leave_pods(cluster: Cluster, pods: dict[str, dict[str, str]]) -> None:
    """Pods a dead worker left behind, created over HTTPS with the account's token."""
    context = ssl.create_default_context(cadata=cluster.tls.ca_pem.decode())
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for name, labels in pods.items():
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}}
            async with http.post(f"{cluster.url}{PODS}", json=body, ssl=context) as answer:
                assert answer.status < 300, await answer.text()


def live_pods(emulator: ApiServerEmulator) -> set[str]:
    return {
        str(name)
        for (resource, _namespace, name), obj in list(emulator.objects.items())
        if str(getattr(resource, "plural", resource)).endswith("pods") and not obj.deleted
    }


async def test_without_a_cluster_block_the_runner_acts_as_the_pods_service_account(
    cluster: Cluster, service_account: Path
) -> None:
    await leave_pods(
        cluster,
        {
            "gantry-step-a": {**RUN_LABELS, **GANTRY_LABELS},
            "gantry-step-b": {"gantry.flow-run-id": "another-run", **GANTRY_LABELS},
        },
    )
    seeded = len(cluster.emulator.received())

    assert await runner().reap(RUN_LABELS) == ["gantry-step-a"]

    assert live_pods(cluster.emulator) == {"gantry-step-b"}
    calls = cluster.emulator.received()[seeded:]
    assert [(str(c.method.value), str(c.url.path)) for c in calls] == [
        ("GET", PODS),
        ("DELETE", f"{PODS}/gantry-step-a"),
    ]
    # Every call carried the token the kubelet mounted (the emulator refuses any other).
    assert {c.headers.get("Authorization") for c in calls} == {f"Bearer {TOKEN}"}


async def test_the_api_server_must_present_a_certificate_of_the_mounted_ca(
    cluster: Cluster, service_account: Path, tmp_path: Path
) -> None:
    # A CA file of another cluster: the server's certificate is not trusted, nothing is sent.
    service_account.write_bytes(make_tls(tmp_path / "other", "another-cluster").ca_pem)
    seen = len(cluster.emulator.received())

    with pytest.raises(SandboxError, match="cannot reap step pods") as caught:
        await runner().reap(RUN_LABELS)

    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert len(cluster.emulator.received()) == seen


async def test_without_a_service_account_or_a_block_there_is_no_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)

    with pytest.raises(SandboxError, match="no Kubernetes cluster to run steps in"):
        await runner().reap(RUN_LABELS)
