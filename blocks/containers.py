"""The container engine and registry credentials, as prefect-docker's own blocks.

Gantry does not define new block types for these: prefect-docker's ``DockerHost`` (where the
Docker Engine API is) and ``DockerRegistryCredentials`` (who we are to a registry) already hold
them, with the password as ``SecretStr``. This module turns them into clients, loads the push
credentials (a saved block wins over the environment), and makes registry credentials for ECR
from prefect-aws' ``AwsCredentials``.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from typing import Any

import docker
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import SecretStr

from blocks.saved import load_saved_block
from core.redact import register_model_secrets

__all__ = [
    "DEFAULT_REGISTRY_BLOCK",
    "DockerHost",
    "DockerRegistryCredentials",
    "EcrLoginError",
    "auth_config",
    "docker_client",
    "ecr_credentials",
    "load_registry_credentials",
    "registry_credentials_from_env",
]

logger = logging.getLogger("gantry.registry")

# Builds and pushes of large images take longer than docker-py's 60 s default.
DEFAULT_TIMEOUT = 600
DEFAULT_REGISTRY_BLOCK = "gantry-registry"
ENV_REGISTRY_USERNAME = "GANTRY_REGISTRY_USERNAME"
ENV_REGISTRY_PASSWORD = "GANTRY_REGISTRY_PASSWORD"  # noqa: S105 (a variable name, not a secret)


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


def _registry_host(address: str) -> str:
    return address.strip().removeprefix("https://").removeprefix("http://").rstrip("/").lower()


def registry_credentials_from_env(
    registry: str, env: Mapping[str, str] | None = None
) -> DockerRegistryCredentials | None:
    """``GANTRY_REGISTRY_USERNAME`` / ``_PASSWORD`` for ``registry``; None when either is unset."""
    env = os.environ if env is None else env
    username = env.get(ENV_REGISTRY_USERNAME, "").strip()
    password = env.get(ENV_REGISTRY_PASSWORD, "")
    if not username or not password:
        return None
    credentials = DockerRegistryCredentials(
        username=username, password=SecretStr(password), registry_url=registry
    )
    register_model_secrets(credentials)
    return credentials


async def load_registry_credentials(
    registry: str, block_name: str | None = DEFAULT_REGISTRY_BLOCK
) -> DockerRegistryCredentials | None:
    """Push credentials for ``registry``: the saved block, else the environment, else None.

    A saved block issued for another registry is not used: credentials go only to the registry
    they name, never to whichever address a run pushes to.
    """
    if block_name:
        block = await load_saved_block(DockerRegistryCredentials, block_name)
        if block is not None:
            if _registry_host(block.registry_url) == _registry_host(registry):
                return block
            logger.warning(
                "the saved %r registry block is for %s, not %s: not using it",
                block_name,
                block.registry_url,
                registry,
            )
    return registry_credentials_from_env(registry)


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
