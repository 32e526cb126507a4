"""Clients from prefect-docker's blocks, and ECR credentials from prefect-aws' AwsCredentials.

ECR is reached through a local HTTP server answering with the documented shape of
``GetAuthorizationToken`` (AWS JSON 1.1); no real AWS account is involved.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from prefect_aws import AwsClientParameters, AwsCredentials
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import SecretStr

from blocks.containers import EcrLoginError, auth_config, docker_client, ecr_credentials


class _FakeEcr(BaseHTTPRequestHandler):
    answer: ClassVar[tuple[int, dict[str, Any]]] = (200, {})
    targets: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).targets.append(self.headers.get("X-Amz-Target", ""))
        status, body = type(self).answer
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ecr_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEcr)
    _FakeEcr.targets = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _aws(endpoint: str) -> AwsCredentials:
    return AwsCredentials(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key=SecretStr("not-a-real-key"),
        region_name="eu-west-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )


def test_ecr_token_becomes_registry_credentials_with_a_secret_password(ecr_endpoint: str) -> None:
    token = base64.b64encode(b"AWS:ecr-password-123").decode()
    _FakeEcr.answer = (
        200,
        {
            "authorizationData": [
                {
                    "authorizationToken": token,
                    "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                    "expiresAt": 1893456000,
                }
            ]
        },
    )
    credentials = ecr_credentials(_aws(ecr_endpoint))
    assert _FakeEcr.targets == ["AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"]
    assert credentials.username == "AWS"
    assert credentials.registry_url == "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert credentials.password.get_secret_value() == "ecr-password-123"
    assert "ecr-password-123" not in repr(credentials)
    assert auth_config(credentials) == {"username": "AWS", "password": "ecr-password-123"}


def test_ecr_refusal_is_an_ecr_login_error(ecr_endpoint: str) -> None:
    _FakeEcr.answer = (
        400,
        {"__type": "AccessDeniedException", "message": "User is not authorized"},
    )
    with pytest.raises(EcrLoginError, match="AccessDeniedException"):
        ecr_credentials(_aws(ecr_endpoint))


def test_malformed_ecr_token_is_an_ecr_login_error(ecr_endpoint: str) -> None:
    _FakeEcr.answer = (200, {"authorizationData": []})
    with pytest.raises(EcrLoginError, match="no authorization token"):
        ecr_credentials(_aws(ecr_endpoint))


def test_auth_config_carries_the_block_credentials() -> None:
    block = DockerRegistryCredentials(
        username="ci", password=SecretStr("s3cret"), registry_url="127.0.0.1:5000"
    )
    assert auth_config(block) == {"username": "ci", "password": "s3cret"}
    assert "s3cret" not in repr(block)


@pytest.mark.engine
@pytest.mark.slow
def test_docker_client_reaches_the_engine_from_a_url_or_a_docker_host_block(
    container_engine: str,
) -> None:
    with docker_client(container_engine) as from_url:
        assert from_url.ping()
    with docker_client(DockerHost(base_url=container_engine)) as from_block:
        assert from_block.version()["Components"]
