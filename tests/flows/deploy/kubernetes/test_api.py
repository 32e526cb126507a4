"""KubeApi against the emulated API server: what is retried, how often, and what is not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kmock import KubernetesError

from blocks.cluster import KubernetesTarget
from clients.retry import RetryPolicy
from flows.deploy.kubernetes.api import (
    ApiCallError,
    ClusterUnreachableError,
    KubeApi,
    UnknownKindError,
)
from tests.flows.deploy.kubernetes.conftest import EMULATOR_TOKEN, ApiServerEmulator
from tests.flows.deploy.kubernetes.trees import deployment

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

QUICK = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_wait=1.0)
OBJECT_PATH = "/apis/apps/v1/namespaces/staging/deployments/tasks-api"
LOGGER = "tests.kubeapi"


def manifest() -> dict[str, Any]:
    obj = deployment()
    obj["metadata"]["namespace"] = "staging"
    return obj


def requests_to(emulator: ApiServerEmulator, method: str, path: str) -> list[Any]:
    return [
        r for r in emulator.received() if str(r.method.value) == method and str(r.url.path) == path
    ]


def failing(method: str, path: str, status: int, reason: str, times: int | None = None) -> Any:
    """A fault answering ``status`` to ``method path`` (the first ``times`` tries, or all)."""
    seen: list[Any] = []

    def fault(incoming: Any) -> KubernetesError | None:
        if str(incoming.method.value) != method or str(incoming.url.path) != path:
            return None
        seen.append(incoming)
        if times is not None and len(seen) > times:
            return None
        return KubernetesError(status=status, reason=reason, message=f"{reason.lower()} now")

    return fault


@contextlib.asynccontextmanager
async def kube_api(target: KubernetesTarget) -> AsyncIterator[KubeApi]:
    async with target.api_client() as client:
        yield KubeApi(client, retry=QUICK, logger=logging.getLogger(LOGGER))


async def test_a_throttled_apply_is_retried_until_the_api_server_takes_it(
    target_block: KubernetesTarget,
    emulator: ApiServerEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    emulator.fault = failing("PATCH", OBJECT_PATH, 429, "TooManyRequests", times=2)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with kube_api(target_block) as api:
            rtype = await api.resource_type("apps/v1", "Deployment")
            await api.apply(rtype, manifest())

    assert len(requests_to(emulator, "PATCH", OBJECT_PATH)) == 3
    assert emulator.deployment("staging", "tasks-api")["spec"]["replicas"] == 2
    retries = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(retries) == 2
    assert retries[0].startswith(f"PATCH {OBJECT_PATH} failed (try 1 of 3)")
    assert "answered 429 Too Many Requests: toomanyrequests now" in retries[0]
    assert EMULATOR_TOKEN not in caplog.text


async def test_a_server_error_that_persists_gives_up_after_the_bound(
    target_block: KubernetesTarget, emulator: ApiServerEmulator
) -> None:
    emulator.fault = failing("GET", OBJECT_PATH, 503, "ServiceUnavailable")

    async with kube_api(target_block) as api:
        rtype = await api.resource_type("apps/v1", "Deployment")
        with pytest.raises(ApiCallError) as caught:
            await api.get(rtype, "staging", "tasks-api")

    assert caught.value.status == 503
    assert "answered 503 Service Unavailable: serviceunavailable now" in str(caught.value)
    assert len(requests_to(emulator, "GET", OBJECT_PATH)) == QUICK.attempts


@pytest.mark.parametrize(("status", "reason"), [(403, "Forbidden"), (422, "Invalid")])
async def test_a_refusal_is_not_retried(
    target_block: KubernetesTarget, emulator: ApiServerEmulator, status: int, reason: str
) -> None:
    emulator.fault = failing("PATCH", OBJECT_PATH, status, reason)

    async with kube_api(target_block) as api:
        rtype = await api.resource_type("apps/v1", "Deployment")
        with pytest.raises(ApiCallError) as caught:
            await api.apply(rtype, manifest())

    assert caught.value.status == status
    assert len(requests_to(emulator, "PATCH", OBJECT_PATH)) == 1


async def test_a_missing_object_is_none_and_not_retried(
    target_block: KubernetesTarget, emulator: ApiServerEmulator
) -> None:
    async with kube_api(target_block) as api:
        rtype = await api.resource_type("apps/v1", "Deployment")
        assert await api.get(rtype, "staging", "tasks-api") is None

    assert len(requests_to(emulator, "GET", OBJECT_PATH)) == 1


async def test_an_api_group_the_cluster_does_not_serve_is_an_unknown_kind(
    target_block: KubernetesTarget,
) -> None:
    async with kube_api(target_block) as api:
        with pytest.raises(UnknownKindError, match=r"does not serve example\.dev/v1"):
            await api.resource_type("example.dev/v1", "Widget")
        with pytest.raises(UnknownKindError, match="does not serve kind Widget in apps/v1"):
            await api.resource_type("apps/v1", "Widget")


async def test_apply_is_server_side_as_the_field_manager_taking_over_conflicts(
    target_block: KubernetesTarget, emulator: ApiServerEmulator
) -> None:
    async with target_block.api_client() as client:
        api = KubeApi(client, "gantry-test", retry=QUICK)
        rtype = await api.resource_type("apps/v1", "Deployment")
        answer = await api.apply(rtype, manifest())

    (write,) = emulator.writes()
    assert write.headers.get("Content-Type") == "application/apply-patch+yaml"
    assert write.headers.get("Authorization") == f"Bearer {EMULATOR_TOKEN}"
    assert write.params.get("fieldManager") == "gantry-test"
    assert write.params.get("force", "").lower() == "true"
    assert answer["metadata"]["name"] == "tasks-api"


class DroppingProxy:
    """A loopback TCP proxy to the emulator that hangs up on its first ``drops`` connections.

    That is what a restarting API server or a load balancer losing its backend looks like
    to a client: the connection closes before any answer.
    """

    def __init__(self, upstream_port: int, drops: int) -> None:
        self.upstream_port = upstream_port
        self.drops = drops
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections <= self.drops:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def kubeconfig_for(kubeconfig: Path, port: int, tmp_path: Path) -> Path:
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    path = tmp_path / f"via-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# aiohttp itself reconnects once when an idempotent request's connection drops (RFC 9112),
# so one try of a GET can cost two connections.
AIOHTTP_TRIES_PER_GET = 2


async def test_a_dropped_connection_is_retried_on_a_new_one(
    emulator: ApiServerEmulator,
    kubeconfig: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = emulator.servers[0].url.port or 0
    async with DroppingProxy(upstream, drops=AIOHTTP_TRIES_PER_GET) as proxy:
        target = KubernetesTarget.from_kubeconfig(kubeconfig_for(kubeconfig, proxy.port, tmp_path))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            async with kube_api(target) as api:
                rtype = await api.resource_type("apps/v1", "Deployment")

    assert rtype.namespaced
    (retry,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert "GET /apis/apps/v1: the API server did not answer" in retry
    assert len(requests_to(emulator, "GET", "/apis/apps/v1")) == 1


async def test_a_server_that_keeps_hanging_up_is_unreachable_after_the_bound(
    emulator: ApiServerEmulator,
    kubeconfig: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = emulator.servers[0].url.port or 0
    async with DroppingProxy(upstream, drops=100) as proxy:
        target = KubernetesTarget.from_kubeconfig(kubeconfig_for(kubeconfig, proxy.port, tmp_path))
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            async with kube_api(target) as api:
                with pytest.raises(ClusterUnreachableError, match="did not answer") as caught:
                    await api.resource_type("apps/v1", "Deployment")

    assert len([r for r in caplog.records if r.name == LOGGER]) == QUICK.attempts - 1
    assert QUICK.attempts <= proxy.connections <= QUICK.attempts * AIOHTTP_TRIES_PER_GET
    assert EMULATOR_TOKEN not in str(caught.value)
    assert emulator.received() == []
