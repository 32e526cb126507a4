"""The registry client's answers and errors, against a local server with the API's shapes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

from clients.registry import (
    DigestMismatch,
    ManifestNotFound,
    RegistryAuthError,
    RegistryClient,
    RegistryClientError,
    RegistryUnavailable,
    is_loopback,
    sha256_digest,
)
from clients.retry import RetryPolicy
from core.ports import free_port

DIGEST = "sha256:" + "ab" * 32


class _Registry(BaseHTTPRequestHandler):
    status: ClassVar[int] = 200
    digest: ClassVar[str | None] = DIGEST
    seen: ClassVar[list[dict[str, str]]] = []

    def do_HEAD(self) -> None:
        type(self).seen.append({"path": self.path, **dict(self.headers.items())})
        self.send_response(type(self).status)
        if type(self).digest:
            self.send_header("Docker-Content-Digest", type(self).digest or "")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def address() -> Iterator[str]:
    _Registry.status, _Registry.digest, _Registry.seen = 200, DIGEST, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_digest_is_read_from_the_manifest_head_with_oci_and_docker_accept_types(
    address: str,
) -> None:
    client = RegistryClient(address, "ci", SecretStr("pw"))
    assert client.manifest_digest("acme/api", "abc") == DIGEST
    request = _Registry.seen[0]
    assert request["path"] == "/v2/acme/api/manifests/abc"
    assert "application/vnd.oci.image.manifest.v1+json" in request["Accept"]
    assert "application/vnd.docker.distribution.manifest.v2+json" in request["Accept"]
    assert request["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, RegistryAuthError),
        (403, RegistryAuthError),
        (404, ManifestNotFound),
        (503, RegistryUnavailable),
        (500, RegistryUnavailable),
        (418, RegistryClientError),
    ],
)
def test_each_refusal_maps_to_its_own_error(
    address: str, status: int, error: type[Exception]
) -> None:
    _Registry.status = status
    with pytest.raises(error):
        RegistryClient(address).manifest_digest("acme/api", "abc")


def test_a_missing_digest_header_is_an_error(address: str) -> None:
    _Registry.digest = None
    with pytest.raises(RegistryClientError, match="no Docker-Content-Digest"):
        RegistryClient(address).manifest_digest("acme/api", "abc")


def test_a_registry_nobody_listens_on_is_unavailable() -> None:
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        RegistryClient(f"127.0.0.1:{free_port()}", timeout=2).manifest_digest("a", "b")


def test_plain_http_only_for_loopback_registries() -> None:
    assert RegistryClient("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"
    assert RegistryClient("localhost:5000").base_url == "http://localhost:5000"
    assert RegistryClient("ghcr.io").base_url == "https://ghcr.io"
    assert RegistryClient("https://1234.dkr.ecr.eu-west-1.amazonaws.com").base_url == (
        "https://1234.dkr.ecr.eu-west-1.amazonaws.com"
    )
    assert not is_loopback("10.0.0.1:5000")


def test_the_password_stays_out_of_the_repr() -> None:
    assert "pw-secret" not in repr(RegistryClient("127.0.0.1:1", "ci", SecretStr("pw-secret")))


class _Uploads(BaseHTTPRequestHandler):
    """A registry that answers a blob upload, failing the first ``POST`` with 503."""

    seen: ClassVar[list[tuple[str, str, str, bytes]]] = []
    served: ClassVar[bytes] = b""

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append(
            (self.command, self.path, self.headers.get("Authorization", ""), body)
        )

    def _answer(
        self, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._record()
        self._answer(404)

    def do_POST(self) -> None:
        self._record()
        if sum(1 for seen in type(self).seen if seen[0] == "POST") == 1:
            self._answer(503)
        else:
            self._answer(202, {"Location": "/v2/acme/api/blobs/uploads/u1?_state=s1"})

    def do_PUT(self) -> None:
        self._record()
        self._answer(201)

    def do_GET(self) -> None:
        self._record()
        self._answer(200, body=type(self).served)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def uploads() -> Iterator[str]:
    _Uploads.seen, _Uploads.served = [], b""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Uploads)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_wait=1.0)


def test_a_blob_is_uploaded_monolithically_with_basic_auth_and_a_5xx_is_retried(
    uploads: str,
) -> None:
    client = RegistryClient(uploads, "ci", SecretStr("pw"), policy=FAST)
    digest = client.put_blob("acme/api", b"sbom bytes")
    assert digest == sha256_digest(b"sbom bytes")
    methods = [(method, path.split("?")[0]) for method, path, _, _ in _Uploads.seen]
    assert methods == [
        ("HEAD", f"/v2/acme/api/blobs/{digest}"),
        ("POST", "/v2/acme/api/blobs/uploads/"),
        ("POST", "/v2/acme/api/blobs/uploads/"),
        ("PUT", "/v2/acme/api/blobs/uploads/u1"),
    ]
    put = _Uploads.seen[-1]
    # The registry's own state in the location is kept; the digest is added to it.
    assert put[1] == f"/v2/acme/api/blobs/uploads/u1?_state=s1&digest={digest}"
    assert put[3] == b"sbom bytes"
    assert all(auth.startswith("Basic ") for _, _, auth, _ in _Uploads.seen)


def test_a_blob_whose_bytes_are_not_its_digest_is_refused(uploads: str) -> None:
    _Uploads.served = b"tampered"
    with pytest.raises(DigestMismatch):
        RegistryClient(uploads, policy=FAST).get_blob("acme/api", sha256_digest(b"original"))
