"""The registry goes down in the middle of a push: bounded retries, a failure that names the
registry, and no tag left behind half-pushed once the registry is back.

A registry of the test's own (a spare port the session's engine trusts, its own storage) is
stopped while a layer's upload is under way, so the shared ``registry`` is never
touched. The build and push run through the pipeline's own step code (``build_all``,
``push_all``) on the session's real container engine.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from clients.registry import MANIFEST_TYPES
from clients.retry import RetryPolicy
from deployments.engine_registry import Registry
from flows.config import Image
from flows.results import StageResult, StageStatus
from flows.steps.images import build_all, push_all

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(300)]
REPOSITORY = "acme/faults/api"
TAG = "f4017"
ATTEMPTS = 3


class StopMidUpload(threading.Thread):
    """Stops the registry once a blob upload has written ``threshold`` bytes to its storage.

    An upload in progress is a ``data`` file under a repository's ``_uploads`` folder; the
    engine pushes in its own process, so the push is cut mid-blob, not before it began.
    """

    def __init__(self, registry: Registry, threshold: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.registry = registry
        self.threshold = threshold
        self.deadline = time.monotonic() + timeout
        self.cut_at: int | None = None
        self.finish = threading.Event()

    def uploaded(self) -> int:
        sizes = [0]
        for data in self.registry.storage_dir.glob("**/_uploads/*/data"):
            with contextlib.suppress(OSError):
                sizes.append(data.stat().st_size)
        return max(sizes)

    def run(self) -> None:
        while not self.finish.is_set() and time.monotonic() < self.deadline:
            size = self.uploaded()
            if size >= self.threshold:
                self.registry.stop()
                self.cut_at = size
                return
            time.sleep(0.002)


@pytest.fixture
def push_log(caplog: pytest.LogCaptureFixture) -> Iterator[logging.Logger]:
    with caplog.at_level(logging.INFO, logger="test.faults.push"):
        yield logging.getLogger("test.faults.push")


@pytest.fixture
def large_image(tmp_path: Path, container_engine: str, busybox_image: str) -> StageResult:
    # A 48 MiB layer of fresh random bytes: an upload long enough to be cut in the middle,
    # and content no registry has seen.
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN head -c 50331648 /dev/urandom > /payload\n"
    )
    built = build_all(context, [Image(name="api")], TAG, container_engine, "acme/faults")
    assert built.status == StageStatus.PASSED, built.detail
    return built


def manifest_status(address: str) -> int:
    response = httpx.head(
        f"http://{address}/v2/{REPOSITORY}/manifests/{TAG}",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    return response.status_code


def test_a_registry_stopped_mid_push_fails_the_push_after_bounded_retries_and_leaves_no_tag(
    large_image: StageResult,
    tmp_path: Path,
    spare_registry_port: Callable[[], int],
    push_log: logging.Logger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry(tmp_path / "registry", spare_registry_port())
    registry.start()
    cutter = StopMidUpload(registry, threshold=1 << 20, timeout=120)
    cutter.start()
    policy = RetryPolicy(attempts=ATTEMPTS, backoff=0.2, backoff_cap=0.5, max_wait=30.0)
    try:
        result = push_all(large_image, registry.address, policy=policy, logger=push_log)
    finally:
        cutter.finish.set()
        cutter.join(30)
    try:
        assert cutter.cut_at is not None, "no upload was seen in progress: nothing was cut"
        # What the user sees: the push stage failed, naming the image, the registry and the
        # bounded number of attempts.
        assert result.status == StageStatus.FAILED
        assert result.detail.startswith(f"api: push to {registry.address} failed after")
        assert f"after {ATTEMPTS} attempts" in result.detail
        assert "pinned" not in str(result.data.get("images", {}))
        retries = sum("retrying in" in r.getMessage() for r in caplog.records)
        assert retries == ATTEMPTS - 1

        # Back up on the same storage: whatever blobs arrived, no tag points at a half push.
        registry.start()
        assert manifest_status(registry.address) == 404
        tags = httpx.get(f"{registry.url}/v2/{REPOSITORY}/tags/list", timeout=10)
        assert TAG not in ((tags.json().get("tags") or []) if tags.status_code == 200 else [])
    finally:
        registry.stop(purge=True)
