"""The Kubernetes API as a deploy needs it: discovery, get, list, server-side apply.

Generic over kinds (whatever the overlay renders), on top of the ``kubernetes_asyncio`` client
that prefect-kubernetes' cluster config builds. Transient failures (connection errors, 429,
5xx) are retried a bounded number of times with jitter; every other failure becomes a
``ClusterError`` naming the call and the API server's own message, never the credentials.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

REQUEST_TIMEOUT = 30.0
RETRY_ATTEMPTS = 3
RETRY_BACKOFF = 0.5
_TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


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
    """Where the API serves one kind, found by discovery."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        prefix = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else (f"/apis/{self.api_version}")
        )
        if self.namespaced and namespace:
            prefix = f"{prefix}/namespaces/{namespace}"
        path = f"{prefix}/{self.plural}"
        return f"{path}/{name}" if name else path


def _status_message(exc: ApiException) -> str:
    """The API server's own explanation from a Status body, else the HTTP reason."""
    body: Any = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            return body[:300]
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])[:500]
    return str(exc.reason or "")


class KubeApi:
    """A thin, kind-generic API client over one ``ApiClient``."""

    def __init__(self, client: ApiClient, field_manager: str = "gantry") -> None:
        self._client = client
        self._field_manager = field_manager
        self._discovered: dict[str, dict[str, ResourceType]] = {}

    async def resource_type(self, api_version: str, kind: str) -> ResourceType:
        if api_version not in self._discovered:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            try:
                listing = await self._call("GET", path)
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
                types[str(entry.get("kind"))] = ResourceType(
                    api_version=api_version,
                    kind=str(entry.get("kind")),
                    plural=name,
                    namespaced=bool(entry.get("namespaced")),
                )
            self._discovered[api_version] = types
        found = self._discovered[api_version].get(kind)
        if found is None:
            raise UnknownKindError(f"the cluster does not serve kind {kind} in {api_version}")
        return found

    async def get(
        self, rtype: ResourceType, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The live object, or None when it does not exist."""
        try:
            found = await self._call("GET", rtype.path(namespace, name))
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
        found = await self._call("GET", rtype.path(namespace), query=[("labelSelector", selector)])
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
        answer = await self._call(
            "PATCH",
            rtype.path(metadata.get("namespace"), metadata["name"]),
            query=[("fieldManager", self._field_manager), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return answer if isinstance(answer, dict) else {}

    async def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        what = f"{method} {path}"
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return await self._client.call_api(
                    path,
                    method,
                    query_params=list(query or []),
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    response_types_map={200: "object", 201: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                    _preload_content=True,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            except ApiException as exc:
                status = int(exc.status or 0)
                if status in _TRANSIENT_STATUSES and attempt < RETRY_ATTEMPTS:
                    await _backoff(attempt)
                    continue
                raise ApiCallError(
                    f"{what} answered {status} {exc.reason or ''}: {_status_message(exc)}".strip(),
                    status,
                ) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt < RETRY_ATTEMPTS:
                    await _backoff(attempt)
                    continue
                raise ClusterUnreachableError(
                    f"{what}: the API server did not answer: {type(exc).__name__}: {exc}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


async def _backoff(attempt: int) -> None:
    delay = RETRY_BACKOFF * 2 ** (attempt - 1)
    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not security
