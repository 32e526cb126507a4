"""Pushing built images to a real registry: digests, retries, authentication, forks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from prefect_docker import DockerRegistryCredentials
from pydantic import SecretStr

from blocks.containers import (
    DEFAULT_REGISTRY_BLOCK,
    ENV_REGISTRY_PASSWORD,
    ENV_REGISTRY_USERNAME,
    load_registry_credentials,
)
from clients.registry import MANIFEST_TYPES
from clients.retry import RetryPolicy
from core.redact import forget_secrets
from core.redact import redact as redact_text
from deployments.engine_registry import Registry
from deployments.prefect_server import PrefectServer
from flows.config import Image
from flows.results import StageResult, StageStatus
from flows.steps.images import ForkPushRefused, build_all, push_all, push_images

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture
def built(tmp_path: Path, container_engine: str, busybox_image: str) -> StageResult:
    # Content unique to the test, so every push uploads a new manifest.
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN echo {tmp_path.name} > /id\n")
    result = build_all(tmp_path, [Image(name="api")], "c0ffee", container_engine, "acme/shop")
    assert result.status == StageStatus.PASSED, result.detail
    return result


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Iterator[logging.Logger]:
    with caplog.at_level(logging.INFO, logger="test.push"):
        yield logging.getLogger("test.push")


def _registry_digest(address: str, name: str, tag: str, auth: httpx.Auth | None = None) -> str:
    response = httpx.head(
        f"http://{address}/v2/{name}/manifests/{tag}",
        headers={"Accept": MANIFEST_TYPES},
        auth=auth,
        timeout=10,
    )
    assert response.status_code == 200
    return str(response.headers["Docker-Content-Digest"])


def _quick(attempts: int, backoff: float = 0.1, cap: float = 0.5) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, backoff=backoff, backoff_cap=cap, max_wait=30.0)


def _retries(caplog: pytest.LogCaptureFixture) -> int:
    return sum("retrying in" in r.getMessage() for r in caplog.records)


def test_push_records_the_digest_the_registry_serves(built: StageResult, registry: str) -> None:
    result = push_all(built, registry)
    assert result.status == StageStatus.PASSED, result.detail
    image = result.data["images"]["api"]
    assert image["repository"] == f"{registry}/acme/shop/api"
    assert image["ref"] == f"{registry}/acme/shop/api:c0ffee"
    assert image["digest"] == _registry_digest(registry, "acme/shop/api", "c0ffee")
    assert image["pinned"] == f"{registry}/acme/shop/api@{image['digest']}"


class _StartOnFirstRetry(logging.Handler):
    """Brings the registry up when the push step announces its first retry."""

    def __init__(self, registry: Registry) -> None:
        super().__init__()
        self.registry = registry

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage() and not self.registry.is_up():
            self.registry.start()


def test_push_retries_while_the_registry_is_down_and_succeeds_when_it_comes_up(
    built: StageResult,
    tmp_path: Path,
    spare_registry_port: Callable[[], int],
    retry_log: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    late = Registry(tmp_path / "late-registry", spare_registry_port())
    starter = _StartOnFirstRetry(late)
    retry_log.addHandler(starter)
    try:
        result = push_all(built, late.address, policy=_quick(4, 0.2, 0.5), logger=retry_log)
    finally:
        retry_log.removeHandler(starter)
        late.stop(purge=True)
    assert result.status == StageStatus.PASSED, result.detail
    assert _retries(caplog) == 1, "the first attempt failed, the second reached the registry"
    assert result.data["images"]["api"]["digest"].startswith("sha256:")


def test_push_to_a_registry_that_stays_down_fails_after_bounded_attempts(
    built: StageResult,
    spare_registry_port: Callable[[], int],
    retry_log: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = f"127.0.0.1:{spare_registry_port()}"
    result = push_all(built, address, policy=_quick(2, 0.1, 0.1), logger=retry_log)
    assert result.status == StageStatus.FAILED
    assert "after 2 attempts" in result.detail
    assert "connection refused" in result.detail
    assert _retries(caplog) == 1


@pytest.fixture
def auth_registry(tmp_path: Path, spare_registry_port: Callable[[], int]) -> Iterator[str]:
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"right-password", bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"gantry:{hashed}\n")
    server = Registry(tmp_path / "auth-registry", spare_registry_port(), htpasswd=htpasswd)
    server.start()
    try:
        yield server.address
    finally:
        server.stop(purge=True)


def _credentials(address: str, password: str) -> DockerRegistryCredentials:
    return DockerRegistryCredentials(
        username="gantry", password=SecretStr(password), registry_url=address
    )


@pytest.mark.parametrize("password", [None, "wrong-password"], ids=["anonymous", "wrong"])
def test_push_refused_for_authentication_fails_at_once_with_a_clear_message(
    built: StageResult,
    auth_registry: str,
    password: str | None,
    retry_log: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    credentials = _credentials(auth_registry, password) if password else None
    result = push_all(built, auth_registry, credentials, policy=_quick(5), logger=retry_log)
    assert result.status == StageStatus.FAILED
    assert "api: the registry refused the credentials" in result.detail
    assert _retries(caplog) == 0, "an authentication error is not retried"
    assert "wrong-password" not in result.detail
    assert "wrong-password" not in caplog.text


def test_push_with_the_right_credentials_succeeds_and_reads_the_digest_with_them(
    built: StageResult, auth_registry: str
) -> None:
    result = push_all(built, auth_registry, _credentials(auth_registry, "right-password"))
    assert result.status == StageStatus.PASSED, result.detail
    served = _registry_digest(
        auth_registry, "acme/shop/api", "c0ffee", httpx.BasicAuth("gantry", "right-password")
    )
    assert result.data["images"]["api"]["digest"] == served


def _catalog(address: str) -> list[str]:
    response = httpx.get(f"http://{address}/v2/_catalog", timeout=10)
    response.raise_for_status()
    repositories: list[str] = response.json().get("repositories") or []
    return repositories


def test_a_fork_never_pushes(
    built: StageResult, tmp_path: Path, spare_registry_port: Callable[[], int]
) -> None:
    empty = Registry(tmp_path / "fork-registry", spare_registry_port())
    empty.start()
    try:
        with pytest.raises(ForkPushRefused, match="fork never pushes"):
            push_all(built, empty.address, fork=True)
        with pytest.raises(ForkPushRefused, match="fork never pushes"):
            asyncio.run(push_images.fn(built, empty.address, fork=True))
        assert _catalog(empty.address) == []
    finally:
        empty.stop(purge=True)


def test_nothing_is_pushed_after_a_failed_build(registry: str) -> None:
    failed = StageResult(name="build", status=StageStatus.FAILED, detail="boom")
    result = push_all(failed, registry)
    assert result.status == StageStatus.FAILED
    assert result.detail == "the build failed"


@pytest.fixture
def saved_registry_block(prefect_server: PrefectServer) -> Iterator[Callable[[str, str], None]]:
    """Saves the registry credentials block on the real Prefect server; deletes it after."""
    del prefect_server  # the session's server: this test's Prefect API

    def save(address: str, password: str) -> None:
        asyncio.run(_credentials(address, password).asave(DEFAULT_REGISTRY_BLOCK, overwrite=True))

    yield save
    asyncio.run(DockerRegistryCredentials.adelete(DEFAULT_REGISTRY_BLOCK))


def _push_task(built: StageResult, registry: str) -> StageResult:
    """The push task's own body (it loads the credentials), outside a flow run."""
    state = asyncio.run(push_images.fn(built, registry))
    result = state.result(raise_on_failure=False)
    assert isinstance(result, StageResult)
    return result


def test_the_push_task_uses_the_saved_registry_block_over_the_environment(
    built: StageResult,
    auth_registry: str,
    saved_registry_block: Callable[[str, str], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_REGISTRY_USERNAME, "gantry")
    monkeypatch.setenv(ENV_REGISTRY_PASSWORD, "wrong-password")
    saved_registry_block(auth_registry, "right-password")
    result = _push_task(built, auth_registry)
    assert result.status == StageStatus.PASSED, result.detail
    assert result.data["images"]["api"]["digest"].startswith("sha256:")


def test_without_a_saved_block_the_push_task_uses_the_environment_credentials(
    built: StageResult, auth_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_REGISTRY_USERNAME, "gantry")
    monkeypatch.setenv(ENV_REGISTRY_PASSWORD, "right-password")
    result = _push_task(built, auth_registry)
    assert result.status == StageStatus.PASSED, result.detail


def test_a_saved_block_for_another_registry_is_never_sent(
    built: StageResult,
    auth_registry: str,
    saved_registry_block: Callable[[str, str], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv(ENV_REGISTRY_USERNAME, raising=False)
    monkeypatch.delenv(ENV_REGISTRY_PASSWORD, raising=False)
    saved_registry_block("registry.elsewhere.example:5000", "right-password")
    with caplog.at_level(logging.WARNING, logger="gantry.registry"):
        result = _push_task(built, auth_registry)
    assert result.status == StageStatus.FAILED
    assert "refused the credentials" in result.detail
    assert "not using it" in caplog.text


def test_loading_the_saved_block_registers_its_password_for_redaction(
    saved_registry_block: Callable[[str, str], None],
) -> None:
    saved_registry_block("127.0.0.1:5999", "block-password-123")
    try:
        credentials = asyncio.run(load_registry_credentials("http://127.0.0.1:5999/"))
        assert credentials is not None
        assert credentials.username == "gantry"
        assert credentials.password.get_secret_value() == "block-password-123"
        assert "block-password-123" not in redact_text("login with block-password-123")
    finally:
        forget_secrets()
