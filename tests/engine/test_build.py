"""Building `[[images]]` with the real engine: tags, streamed logs, and a clear failure."""

from __future__ import annotations

import logging
from pathlib import Path

import docker
import pytest

from flows.config import Image
from flows.results import StageStatus
from flows.steps.images import build_all

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def _checkout(root: Path, base: str, steps: str, name: str = "Dockerfile") -> Path:
    (root / "hello.txt").write_text("hello\n")
    (root / name).write_text(f"FROM {base}\n{steps}")
    return root


def test_build_tags_each_image_with_slug_name_and_sha_and_streams_its_log(
    tmp_path: Path,
    container_engine: str,
    docker_api: docker.DockerClient,
    busybox_image: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    checkout = _checkout(tmp_path, busybox_image, "COPY hello.txt /hello.txt\nRUN cat /hello.txt\n")
    (tmp_path / "worker").mkdir()
    _checkout(tmp_path / "worker", busybox_image, "RUN echo worker-build-ran\n", "Build.df")
    images = [
        Image(name="api"),
        Image(name="worker", context="worker", dockerfile="Build.df"),
    ]
    logger = logging.getLogger("test.build")
    with caplog.at_level(logging.INFO, logger="test.build"):
        result = build_all(
            checkout, images, "abc1234", container_engine, "acme/shop", logger=logger
        )
    assert result.status == StageStatus.PASSED, result.detail
    built = result.data["images"]
    assert built["api"]["ref"] == "localhost/acme/shop/api:abc1234"
    assert built["worker"]["ref"] == "localhost/acme/shop/worker:abc1234"
    assert docker_api.images.get(built["api"]["ref"]).id == built["api"]["id"]
    lines = [r.getMessage() for r in caplog.records]
    assert "[api] hello" in lines, "the RUN output reaches the run log line by line"
    assert "[worker] worker-build-ran" in lines


def test_build_tags_for_the_registry_when_one_is_given(
    tmp_path: Path, container_engine: str, busybox_image: str
) -> None:
    checkout = _checkout(tmp_path, busybox_image, "RUN true\n")
    result = build_all(
        checkout, [Image(name="api")], "abc", container_engine, "acme", "127.0.0.1:5999"
    )
    assert result.status == StageStatus.PASSED, result.detail
    assert result.data["images"]["api"]["ref"] == "127.0.0.1:5999/acme/api:abc"


def test_failing_run_instruction_fails_the_stage_naming_the_instruction(
    tmp_path: Path, container_engine: str, docker_api: docker.DockerClient, busybox_image: str
) -> None:
    checkout = _checkout(tmp_path, busybox_image, "RUN echo before\nRUN exit 3\nRUN echo after\n")
    before = {c.id for c in docker_api.containers.list(all=True)}
    result = build_all(checkout, [Image(name="api")], "abc", container_engine, "acme")
    assert result.status == StageStatus.FAILED
    assert "api: build failed" in result.detail
    assert "RUN exit 3" in result.detail
    assert "exit status 3" in result.detail
    after = {c.id for c in docker_api.containers.list(all=True)}
    assert after == before, "forcerm leaves no build containers behind"


def test_missing_copy_source_fails_the_stage_naming_the_instruction(
    tmp_path: Path, container_engine: str, busybox_image: str
) -> None:
    checkout = _checkout(tmp_path, busybox_image, "COPY not-there.txt /x\n")
    result = build_all(checkout, [Image(name="api")], "abc", container_engine, "acme")
    assert result.status == StageStatus.FAILED
    assert "COPY not-there.txt /x" in result.detail


def test_one_broken_image_fails_the_stage_but_the_others_still_build(
    tmp_path: Path, container_engine: str, docker_api: docker.DockerClient, busybox_image: str
) -> None:
    checkout = _checkout(tmp_path, busybox_image, "RUN true\n")
    (tmp_path / "Broken").write_text(f"FROM {busybox_image}\nRUN false\n")
    images = [Image(name="good"), Image(name="bad", dockerfile="Broken")]
    result = build_all(checkout, images, "t1", container_engine, "acme")
    assert result.status == StageStatus.FAILED
    assert result.detail.startswith("bad: build failed")
    assert "good" in result.data["images"]
    docker_api.images.get("localhost/acme/good:t1")


def test_context_outside_the_checkout_is_refused(tmp_path: Path, container_engine: str) -> None:
    (tmp_path / "repo").mkdir()
    result = build_all(
        tmp_path / "repo", [Image(name="api", context="..")], "abc", container_engine, "acme"
    )
    assert result.status == StageStatus.FAILED
    assert "points outside the checkout" in result.detail


def test_no_images_declared_is_skipped_not_passed(tmp_path: Path, container_engine: str) -> None:
    result = build_all(tmp_path, [], "abc", container_engine, "acme")
    assert result.status == StageStatus.SKIPPED


def test_an_invalid_repository_slug_fails_before_building(
    tmp_path: Path, container_engine: str
) -> None:
    result = build_all(tmp_path, [Image(name="api")], "abc", container_engine, "Acme/Shop")
    assert result.status == StageStatus.FAILED
    assert "'Acme/Shop'" in result.detail


def test_an_unreachable_engine_fails_the_stage_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    host = f"unix://{tmp_path}/no-engine.sock"
    result = build_all(tmp_path, [Image(name="api")], "abc", host, "acme")
    assert result.status == StageStatus.FAILED
    assert f"the container engine at {host} cannot be reached" in result.detail
