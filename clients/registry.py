"""A small client of the OCI distribution API (``/v2/``): what a registry says an image is.

Gantry trusts the registry's own answer for a pushed image's digest (the
``Docker-Content-Digest`` header of ``HEAD /v2/NAME/manifests/TAG``), not only what the engine
reports. Basic authentication covers distribution with htpasswd and ECR (``AWS`` + token);
registries that require a bearer-token exchange are not supported yet.
"""

from __future__ import annotations

import ipaddress

import httpx
from pydantic import SecretStr

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


class RegistryClientError(RuntimeError):
    """The registry could not answer what was asked."""


class RegistryUnavailable(RegistryClientError):
    """The registry could not be reached or answered 5xx: worth retrying."""


class RegistryAuthError(RegistryClientError):
    """The registry refused our credentials (401/403): retrying will not help."""


class ManifestNotFound(RegistryClientError):
    """The registry has no manifest under that name and tag."""


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """Reads manifests from one registry at ``address`` (``host[:port]``)."""

    def __init__(
        self,
        address: str,
        username: str | None = None,
        password: SecretStr | None = None,
        *,
        insecure: bool | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.address = address.removeprefix("https://").removeprefix("http://").rstrip("/")
        # Plain HTTP only for a registry on this machine, unless told otherwise.
        plain = is_loopback(self.address) if insecure is None else insecure
        self.base_url = f"{'http' if plain else 'https'}://{self.address}"
        auth = None
        if username is not None and password is not None:
            auth = httpx.BasicAuth(username, password.get_secret_value())
        self._auth = auth
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"RegistryClient({self.address!r})"

    def manifest_digest(self, repository: str, tag: str) -> str:
        """The digest the registry serves for ``repository:tag``."""
        url = f"{self.base_url}/v2/{repository}/manifests/{tag}"
        try:
            response = httpx.head(
                url, headers={"Accept": MANIFEST_TYPES}, auth=self._auth, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"registry {self.address} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        status = response.status_code
        if status in (401, 403):
            raise RegistryAuthError(
                f"registry {self.address} refused access to {repository} ({status})"
            )
        if status == 404:
            raise ManifestNotFound(f"registry {self.address} has no {repository}:{tag}")
        if status >= 500:
            raise RegistryUnavailable(f"registry {self.address} answered {status}")
        if status != 200:
            raise RegistryClientError(
                f"registry {self.address} answered {status} for {repository}:{tag}"
            )
        digest = str(response.headers.get("Docker-Content-Digest", ""))
        if not digest.startswith("sha256:"):
            raise RegistryClientError(
                f"registry {self.address} gave no Docker-Content-Digest for {repository}:{tag}"
            )
        return digest
