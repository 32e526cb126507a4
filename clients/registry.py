"""A small client of the OCI distribution API (``/v2/``): what a registry says an image is.

Gantry trusts the registry's own answer for a pushed image's digest (the
``Docker-Content-Digest`` header of ``HEAD /v2/NAME/manifests/TAG``), not only what the engine
reports. It also writes what it attaches to an image (SBOMs, signed provenance): blobs by
monolithic upload (``POST`` then ``PUT ?digest=``) and manifests, and reads them back, checking
every byte it fetched by digest against the digest it asked for. Basic authentication covers
distribution with htpasswd and ECR (``AWS`` + token); registries that require a bearer-token
exchange are not supported yet.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx
from pydantic import SecretStr

from clients.retry import RetryPolicy, retry_call

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


class BlobNotFound(RegistryClientError):
    """The registry has no blob with that digest in that repository."""


class DigestMismatch(RegistryClientError):
    """The registry served content whose digest is not the one asked for."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """A manifest as the registry serves it: its exact bytes, media type and digest."""

    content: bytes
    media_type: str
    digest: str


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
        policy: RetryPolicy | None = None,
    ) -> None:
        # Also the credentials that tools this client hands work to (the SBOM generator) use.
        self.username = username
        self.password = password
        self.address = address.removeprefix("https://").removeprefix("http://").rstrip("/")
        # Plain HTTP only for a registry on this machine, unless told otherwise.
        plain = is_loopback(self.address) if insecure is None else insecure
        self.base_url = f"{'http' if plain else 'https'}://{self.address}"
        auth = None
        if username is not None and password is not None:
            auth = httpx.BasicAuth(username, password.get_secret_value())
        self._auth = auth
        self._timeout = timeout
        self.policy = policy or RetryPolicy()

    def __repr__(self) -> str:
        return f"RegistryClient({self.address!r})"

    def manifest_digest(self, repository: str, tag: str) -> str:
        """The digest the registry serves for ``repository:tag``."""
        # Not retried here: the push that asks this has its own retries around it.
        response = self._once(
            "HEAD",
            f"{self.base_url}/v2/{repository}/manifests/{tag}",
            what=f"{repository}:{tag}",
            headers={"Accept": MANIFEST_TYPES},
        )
        digest = str(response.headers.get("Docker-Content-Digest", ""))
        if not digest.startswith("sha256:"):
            raise RegistryClientError(
                f"registry {self.address} gave no Docker-Content-Digest for {repository}:{tag}"
            )
        return digest

    # Writing and reading artifacts. Every call is retried within ``self.policy`` while the
    # registry is unreachable or answers 5xx; a refusal or a missing object is final.

    def _once(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        missing: type[RegistryClientError] = ManifestNotFound,
    ) -> httpx.Response:
        """One request, its failures mapped to this client's errors (5xx: unavailable)."""
        try:
            # Redirects are followed (blobs may live in object storage); httpx drops the
            # Authorization header when a redirect leaves the registry's origin.
            response = httpx.request(
                method,
                url,
                headers=headers,
                content=content,
                auth=self._auth,
                timeout=self._timeout,
                follow_redirects=True,
            )
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"registry {self.address} unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        status = response.status_code
        if status in (401, 403):
            raise RegistryAuthError(f"registry {self.address} refused access to {what} ({status})")
        if status == 404:
            raise missing(f"registry {self.address} has no {what}")
        if status >= 500:
            raise RegistryUnavailable(f"registry {self.address} answered {status} for {what}")
        if status >= 300:
            raise RegistryClientError(
                f"registry {self.address} answered {status} for {what}: {response.text[:200]}"
            )
        return response

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        missing: type[RegistryClientError] = ManifestNotFound,
    ) -> httpx.Response:
        def once() -> httpx.Response:
            return self._once(
                method, url, what=what, headers=headers, content=content, missing=missing
            )

        return retry_call(
            once,
            transient=lambda exc: isinstance(exc, RegistryUnavailable),
            policy=self.policy,
            what=f"{method} {what} at {self.address}",
        )

    def has_blob(self, repository: str, digest: str) -> bool:
        try:
            self._send(
                "HEAD",
                f"{self.base_url}/v2/{repository}/blobs/{digest}",
                what=f"blob {digest} in {repository}",
                missing=BlobNotFound,
            )
        except BlobNotFound:
            return False
        return True

    def put_blob(self, repository: str, data: bytes) -> str:
        """Upload ``data`` as one blob (monolithic upload) unless it is there; its digest."""
        digest = sha256_digest(data)
        if self.has_blob(repository, digest):
            return digest
        what = f"an upload to {repository}"
        started = self._send("POST", f"{self.base_url}/v2/{repository}/blobs/uploads/", what=what)
        location = started.headers.get("Location")
        if not location:
            raise RegistryClientError(f"registry {self.address} gave no upload location")
        # The location may be relative and may carry the registry's own query (its state).
        url = urljoin(f"{self.base_url}/", location)
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        self._send(
            "PUT",
            url,
            what=what,
            headers={"Content-Type": "application/octet-stream"},
            content=data,
        )
        return digest

    def get_blob(self, repository: str, digest: str) -> bytes:
        """The blob ``digest`` of ``repository``, checked against its digest."""
        response = self._send(
            "GET",
            f"{self.base_url}/v2/{repository}/blobs/{digest}",
            what=f"blob {digest} in {repository}",
            missing=BlobNotFound,
        )
        if sha256_digest(response.content) != digest:
            raise DigestMismatch(f"registry {self.address} served other content for {digest}")
        return response.content

    def put_manifest(self, repository: str, reference: str, content: bytes, media_type: str) -> str:
        """Store a manifest under ``reference`` (a tag or its digest); returns its digest."""
        digest = sha256_digest(content)
        response = self._send(
            "PUT",
            f"{self.base_url}/v2/{repository}/manifests/{reference}",
            what=f"manifest {repository}:{reference}",
            headers={"Content-Type": media_type},
            content=content,
        )
        served = response.headers.get("Docker-Content-Digest")
        if served and served != digest:
            raise DigestMismatch(
                f"registry {self.address} stored {repository}:{reference} as {served}, not {digest}"
            )
        return digest

    def get_manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest under ``reference``; when that is a digest, the bytes are checked."""
        response = self._send(
            "GET",
            f"{self.base_url}/v2/{repository}/manifests/{reference}",
            what=f"manifest {repository}:{reference}",
            headers={"Accept": MANIFEST_TYPES},
        )
        digest = sha256_digest(response.content)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(f"registry {self.address} served other content for {reference}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(content=response.content, media_type=media_type, digest=digest)
