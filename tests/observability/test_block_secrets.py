"""Every secret a loaded block holds is masked from then on: fields, PEM keys line by line,
registry passwords, a kubeconfig's tokens, keys and certificate data."""

from __future__ import annotations

import base64
import logging
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from prefect.blocks.core import Block
from prefect.types import SecretDict
from prefect_docker import DockerRegistryCredentials
from pydantic import SecretStr

from blocks.cluster import KubernetesClusterConfig, KubernetesTarget
from blocks.github import GitHubCredentials, github_credentials_from_env
from blocks.saved import load_saved_block
from core.redact import MASK, RedactingFilter, redact

if TYPE_CHECKING:
    from deployments.prefect_server import PrefectServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

REGISTRY_PASSWORD = "registry-pa55-0d1e2f"
KUBE_TOKEN = "kube-token-a1b2c3d4e5"
CLIENT_KEY_DATA = base64.b64encode(b"client key material 0123456789").decode()
CLIENT_CERT_DATA = base64.b64encode(b"client certificate 0123456789").decode()
WEBHOOK_SIGNING = "signing-value-99aa88bb"


class ProbeSettings(Block):
    """A block with a ``SecretDict`` field, as some integrations keep headers or env."""

    _block_type_name = "Gantry test secret dict probe"

    headers: SecretDict


@pytest.fixture(scope="module")
def private_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real RSA private key in PEM, made by openssl (argv, no shell)."""
    path = tmp_path_factory.mktemp("pem") / "app.pem"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path.read_text()


def body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def kubeconfig() -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [
            {
                "name": "deployer",
                "user": {
                    "token": KUBE_TOKEN,
                    "client-key-data": CLIENT_KEY_DATA,
                    "client-certificate-data": CLIENT_CERT_DATA,
                },
            }
        ],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "deployer"}}],
        "current-context": "c",
    }


def logged(message: str) -> str:
    """What a log handler with the redacting filter would print for ``message``."""
    record = logging.LogRecord("gantry.test", logging.INFO, __file__, 1, message, None, None)
    RedactingFilter().filter(record)
    return record.getMessage()


@pytest.mark.slow
async def test_loading_saved_blocks_registers_every_secret_they_hold(
    prefect_server: PrefectServer, private_key: str
) -> None:
    del prefect_server  # the session's real server: blocks are saved and read back through it
    suffix = uuid.uuid4().hex[:8]
    await GitHubCredentials(
        app_id="12345", private_key=SecretStr(private_key), installation_id=7
    ).asave(f"gh-{suffix}")
    await DockerRegistryCredentials(
        username="pusher", password=SecretStr(REGISTRY_PASSWORD), registry_url="127.0.0.1:5000"
    ).asave(f"registry-{suffix}")
    await KubernetesTarget(
        cluster_config=KubernetesClusterConfig(config=kubeconfig(), context_name="c")
    ).asave(f"cluster-{suffix}")
    await ProbeSettings(headers={"X-Signing": WEBHOOK_SIGNING}).asave(f"probe-{suffix}")
    lines = body_lines(private_key)
    # Nothing is masked before the blocks are loaded (no shape gives these values away).
    assert redact(lines[5]) == lines[5]
    assert redact(REGISTRY_PASSWORD) == REGISTRY_PASSWORD

    assert await load_saved_block(GitHubCredentials, f"gh-{suffix}") is not None
    assert await load_saved_block(DockerRegistryCredentials, f"registry-{suffix}") is not None
    assert await load_saved_block(KubernetesTarget, f"cluster-{suffix}") is not None
    assert await load_saved_block(ProbeSettings, f"probe-{suffix}") is not None

    for secret in [
        *lines,
        REGISTRY_PASSWORD,
        KUBE_TOKEN,
        CLIENT_KEY_DATA,
        CLIENT_CERT_DATA,
        WEBHOOK_SIGNING,
    ]:
        assert redact(f"step printed {secret} here") == f"step printed {MASK} here", secret
        assert secret not in logged(f"log line with {secret}")
    assert private_key.strip() not in redact(f"the key:\n{private_key}")


def test_a_github_app_key_from_the_environment_is_registered_line_by_line(
    private_key: str,
) -> None:
    credentials = github_credentials_from_env(
        {
            "GANTRY_GITHUB_APP_ID": "12345",
            "GANTRY_GITHUB_APP_PRIVATE_KEY": private_key,
            "GANTRY_GITHUB_APP_INSTALLATION_ID": "7",
        }
    )

    assert credentials is not None
    for line in body_lines(private_key):
        assert redact(f"excerpt: {line}") == f"excerpt: {MASK}"


def test_a_target_read_from_a_kubeconfig_file_registers_its_credentials(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kubeconfig()))

    KubernetesTarget.from_kubeconfig(path, "c")

    for secret in (KUBE_TOKEN, CLIENT_KEY_DATA, CLIENT_CERT_DATA):
        assert secret not in redact(f"kubeconfig says {secret}")
