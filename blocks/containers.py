"""The container engine and registry credentials, as prefect-docker's own blocks.

Gantry does not define new block types for these: prefect-docker's ``DockerHost`` (where the
Docker Engine API is) and ``DockerRegistryCredentials`` (who we are to a registry) already hold
them, with the password as ``SecretStr``. This module turns them into clients, and makes
registry credentials for ECR from prefect-aws' ``AwsCredentials``.
"""

from __future__ import annotations

import base64
from typing import Any

import docker
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import SecretStr

__all__ = [
    "DockerHost",
    "DockerRegistryCredentials",
    "EcrLoginError",
    "auth_config",
    "docker_client",
    "ecr_credentials",
]

# Builds and pushes of large images take longer than docker-py's 60 s default.
DEFAULT_TIMEOUT = 600


class EcrLoginError(RuntimeError):
    """ECR did not give a registry token."""


def docker_client(
    host: DockerHost | str | None = None, timeout: int = DEFAULT_TIMEOUT
) -> docker.DockerClient:
    """A Docker SDK client for a ``DockerHost`` block, a ``DOCKER_HOST`` url, or the environment."""
    block = host if isinstance(host, DockerHost) else DockerHost(base_url=host, timeout=timeout)
    client: docker.DockerClient = block.get_client()
    return client


def auth_config(credentials: DockerRegistryCredentials) -> dict[str, str]:
    """The ``auth_config`` for one push; it goes to the engine, never into a log."""
    password: SecretStr = credentials.password
    return {"username": credentials.username, "password": password.get_secret_value()}


def ecr_credentials(
    aws_credentials: Any, registry_id: str | None = None
) -> DockerRegistryCredentials:
    """Registry credentials for ECR from a prefect-aws ``AwsCredentials`` block.

    ECR hands out a 12-hour token as ``base64("AWS:<password>")`` with the registry's endpoint.
    """
    client = aws_credentials.get_client("ecr")
    kwargs: dict[str, Any] = {"registryIds": [registry_id]} if registry_id else {}
    try:
        answer = client.get_authorization_token(**kwargs)
        data = answer["authorizationData"][0]
        username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        endpoint = str(data["proxyEndpoint"])
    except (BotoCoreError, ClientError, KeyError, IndexError, TypeError, ValueError) as exc:
        # botocore's errors carry no secrets; keep the type and message, drop the token.
        raise EcrLoginError(
            f"ECR gave no authorization token: {type(exc).__name__}: {exc}"
        ) from exc
    if not password:
        raise EcrLoginError("ECR answered with a malformed authorization token")
    return DockerRegistryCredentials(
        username=username,
        password=SecretStr(password),
        registry_url=endpoint.removeprefix("https://").removeprefix("http://"),
        reauth=True,
    )
