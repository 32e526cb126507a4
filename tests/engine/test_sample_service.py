"""The sample service's image builds on the offline Python base, starts, and answers /healthz."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from clients.base_image import ensure_base_image
from core.ports import free_port
from flows.config import Image
from flows.deploy.local import remove_container
from flows.results import StageStatus
from flows.steps.images import build_all

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample-service"


@pytest.fixture
def sample_checkout(tmp_path: Path) -> Path:
    """The sample service as a checkout (its Dockerfile, .dockerignore and app)."""
    if not (SAMPLE / "app" / "tasks_api").is_dir():
        pytest.fail(f"the sample service app is missing under {SAMPLE}")
    checkout = tmp_path / "sample-service"
    shutil.copytree(SAMPLE, checkout, ignore=shutil.ignore_patterns(".*cache*", ".venv"))
    (checkout / "tests" / "stray-file-in-context.txt").parent.mkdir(exist_ok=True)
    (checkout / "tests" / "stray-file-in-context.txt").write_text("not for the image")
    return checkout


@pytest.fixture
def started(docker_api: docker.DockerClient) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for container_id in ids:
        remove_container(docker_api.containers.get(container_id))


def _output(client: docker.DockerClient, image: str, command: list[str]) -> str:
    # Not `run(remove=True)`: with Podman the auto-removal races the wait for the exit code.
    container = client.containers.run(image, command, detach=True)
    try:
        code = container.wait(timeout=60)["StatusCode"]
        if code == -1:
            # Podman's wait sometimes answers -1 when it races the container's exit; the
            # exit code it recorded is in the container's state.
            container.reload()
            code = container.attrs["State"]["ExitCode"]
        assert code == 0, container.logs().decode()
        return str(container.logs().decode())
    finally:
        remove_container(container)


def _healthz(url: str, timeout: float) -> httpx.Response | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=2)
        except httpx.HTTPError:
            time.sleep(0.1)
    return None


def test_sample_service_image_runs_as_non_root_and_answers_healthz(
    sample_checkout: Path,
    container_engine: str,
    docker_api: docker.DockerClient,
    python_base_image: str,
    started: list[str],
) -> None:
    result = build_all(sample_checkout, [Image(name="tasks-api")], "s1", container_engine, "demo")
    assert result.status == StageStatus.PASSED, result.detail
    ref = result.data["images"]["tasks-api"]["ref"]
    config = docker_api.images.get(ref).attrs["Config"]
    assert config["User"] not in ("", "0", "root")
    assert "8000/tcp" in config["ExposedPorts"]
    listing = _output(docker_api, ref, ["ls", "/app"])
    assert "tasks_api" in listing
    assert "tests" not in listing.split(), ".dockerignore keeps tests out of the image"

    port = free_port()
    container = docker_api.containers.run(ref, detach=True, ports={"8000/tcp": ("127.0.0.1", port)})
    started.append(container.id)
    response = _healthz(f"http://127.0.0.1:{port}/healthz", timeout=20)
    assert response is not None, docker_api.containers.get(container.id).logs().decode()[-2000:]
    assert response.status_code == 200


def test_base_image_is_made_once_and_reused(
    docker_api: docker.DockerClient, python_base_image: str, tmp_path: Path
) -> None:
    before = docker_api.images.get(python_base_image).id
    # An empty cache folder: re-use must come from the engine, not from a rebuild.
    assert ensure_base_image(docker_api, cache_dir=tmp_path / "empty-cache") == python_base_image
    assert docker_api.images.get(python_base_image).id == before
    assert not (tmp_path / "empty-cache").exists()
    check = "import http.server, json; print('ok')"
    assert _output(docker_api, python_base_image, ["python3", "-c", check]).strip() == "ok"
