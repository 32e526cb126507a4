"""The Kubernetes API as a deploy needs it: discovery, get, list, server-side apply.

Generic over kinds (whatever the overlay renders), through ``kubernetes_asyncio``'s dynamic
client on the ``ApiClient`` that prefect-kubernetes' cluster config builds, so every request
goes to the server, and with the credentials, that the block's kubeconfig names. Transient
failures (connection errors, timeouts, 429, 5xx) are retried within the project's shared
``RetryPolicy``; every failure becomes a ``ClusterError`` naming the call and the API
server's own message, never the credentials.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.dynamic import DynamicClient, Resource

from clients.retry import RetryPolicy, aretry_call
from flows.logs import StepLogger, step_logger

REQUEST_TIMEOUT = 30.0
# Three tries in all with the shared equal-jitter backoff (about 0.25-0.5 s, then 0.5-1 s):
# long enough to ride out an API server restart behind a load balancer, short enough that a
# broken cluster fails the deploy promptly.
RETRY = RetryPolicy(attempts=3, backoff=0.5, backoff_cap=4.0, max_wait=10.0)
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
APPLY_PATCH = "application/apply-patch+yaml"


class ClusterError(RuntimeError):
    """A Kubernetes API call failed."""


class ClusterUnreachableError(ClusterError):
    """The API server did not answer (connection refused, timeout, TLS failure)."""


class ApiCallError(ClusterError):
    """The API server answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UnknownKindError(ClusterError):
    """The cluster does not serve this apiVersion/kind."""


@dataclass(frozen=True)
class ResourceType:
    """Where the API serves one kind, found by discovery; ``resource`` builds its URLs."""

    api_version: str
    kind: str
    namespaced: bool
    resource: Resource


def is_transient(exc: Exception) -> bool:
    """Whether another try may succeed: no answer, throttled, or the server's own fault."""
    if isinstance(exc, ClusterUnreachableError):
        return True
    return isinstance(exc, ApiCallError) and exc.status in TRANSIENT_STATUSES


def _status_message(body: bytes | str | None, reason: str | None) -> str:
    """The API server's own explanation from a Status body, else the HTTP reason."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            status = json.loads(body)
        except ValueError:
            return body[:300]
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])[:500]
    return reason or ""


class KubeApi:
    """A thin, kind-generic client over one ``ApiClient``, through the dynamic client.

    Discovery is one GET of the group version's resource list, kept here rather than in
    the dynamic client's ``Discoverer``: that one turns a 503 on a group version into an
    empty list (so "unknown kind" instead of a retry), and in kubernetes_asyncio 36.x it
    hands error answers back as objects (fixed upstream after 36.1.0). Every request is
    sent with ``serialize=False`` so the HTTP status is checked here on either behaviour.
    """

    def __init__(
        self,
        client: ApiClient,
        field_manager: str = "gantry",
        *,
        retry: RetryPolicy = RETRY,
        logger: StepLogger | None = None,
    ) -> None:
        # Never awaited: awaiting starts the Discoverer, which this class does not use.
        self._dynamic = DynamicClient(client)
        self._field_manager = field_manager
        self._retry = retry
        self._logger = logger or step_logger("deploy")
        self._discovered: dict[str, dict[str, ResourceType]] = {}

    async def resource_type(self, api_version: str, kind: str) -> ResourceType:
        if api_version not in self._discovered:
            self._discovered[api_version] = await self._discover(api_version, kind)
        found = self._discovered[api_version].get(kind)
        if found is None:
            raise UnknownKindError(f"the cluster does not serve kind {kind} in {api_version}")
        return found

    async def _discover(self, api_version: str, kind: str) -> dict[str, ResourceType]:
        group, _, version = api_version.rpartition("/")
        prefix = "apis" if group else "api"
        path = f"/{prefix}/{api_version}"
        try:
            listing = await self._call(
                f"GET {path}", lambda: self._dynamic.request("GET", path, serialize=False)
            )
        except ApiCallError as exc:
            if exc.status == 404:
                raise UnknownKindError(
                    f"the cluster does not serve {api_version} (for {kind})"
                ) from exc
            raise
        types: dict[str, ResourceType] = {}
        for entry in listing.get("resources", []) if isinstance(listing, dict) else []:
            name = str(entry.get("name", ""))
            if not name or "/" in name:  # subresources such as deployments/status
                continue
            namespaced = bool(entry.get("namespaced"))
            served = str(entry.get("kind"))
            types[served] = ResourceType(
                api_version=api_version,
                kind=served,
                namespaced=namespaced,
                resource=Resource(
                    prefix=prefix,
                    group=group,
                    api_version=version,
                    kind=served,
                    namespaced=namespaced,
                    name=name,
                    client=self._dynamic,
                ),
            )
        return types

    async def get(
        self, rtype: ResourceType, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        what = f"GET {rtype.resource.path(name=name, namespace=namespace)}"
        try:
            found = await self._call(
                what,
                lambda: self._dynamic.get(
                    rtype.resource, name=name, namespace=namespace, serialize=False
                ),
            )
        except ApiCallError as exc:
            if exc.status == 404:
                return None
            raise
        return found if isinstance(found, dict) else None

    async def select(
        self, rtype: ResourceType, namespace: str | None, labels: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Objects carrying all ``labels`` (checked here too, not only by the server)."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        what = f"GET {rtype.resource.path(namespace=namespace)}"
        found = await self._call(
            what,
            lambda: self._dynamic.get(
                rtype.resource, namespace=namespace, label_selector=selector, serialize=False
            ),
        )
        items = found.get("items", []) if isinstance(found, dict) else []
        return [
            item
            for item in items
            if isinstance(item, dict)
            and all(
                (item.get("metadata", {}).get("labels") or {}).get(key) == value
                for key, value in labels.items()
            )
        ]

    async def apply(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as the field manager, taking over conflicting fields (``force``).

        Apply is idempotent, so retrying it after a transient failure is safe.
        """
        metadata = obj.get("metadata", {})
        name = str(metadata["name"])
        namespace = metadata.get("namespace")
        what = f"PATCH {rtype.resource.path(name=name, namespace=namespace)}"
        answer = await self._call(
            what,
            lambda: self._dynamic.server_side_apply(
                rtype.resource,
                body=obj,
                name=name,
                namespace=namespace,
                field_manager=self._field_manager,
                force_conflicts=True,
                serialize=False,
            ),
        )
        return answer if isinstance(answer, dict) else {}

    async def _call(self, what: str, send: Callable[[], Awaitable[Any]]) -> Any:
        return await aretry_call(
            lambda: self._once(what, send),
            transient=is_transient,
            policy=self._retry,
            what=what,
            logger=self._logger,
        )

    async def _once(self, what: str, send: Callable[[], Awaitable[Any]]) -> Any:
        """One request: its decoded JSON answer, or the ``ClusterError`` it amounts to."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                response: aiohttp.ClientResponse = await send()
                async with response:
                    status, reason, body = response.status, response.reason, await response.read()
        except ApiException as exc:
            # Releases with the upstream fix raise for error statuses themselves.
            status = int(exc.status or 0)
            raise ApiCallError(
                f"{what} answered {status} {exc.reason or ''}: "
                f"{_status_message(exc.body, exc.reason)}".strip(),
                status,
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClusterUnreachableError(
                f"{what}: the API server did not answer: {type(exc).__name__}: {exc}"
            ) from exc
        if not 200 <= status <= 299:
            raise ApiCallError(
                f"{what} answered {status} {reason or ''}: {_status_message(body, reason)}".strip(),
                status,
            )
        try:
            return json.loads(body) if body else {}
        except ValueError as exc:
            raise ClusterError(f"{what}: the API server's answer is not JSON") from exc
