"""The container engine (Podman's Docker API service) restarts while an image build runs.

An engine of the test's own (its own state folder; the session's engine is never touched)
builds through the pipeline's step code (``build_all``). When the build's ``RUN`` step is
running, the engine's service is stopped and started again. What must hold: the build fails
with a clear message (or completes), and nothing of it is left running: no process of the
``RUN`` step on the host, no container (build containers included) on the engine.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from deployments.engine import ContainerEngine
from flows.config import Image
from flows.results import StageStatus
from flows.steps.images import build_all
from tests.faults.bounded import wait_for
from tests.plugins.engine import build_busybox

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(300)]
# A duration no other process on the machine sleeps for: the RUN step's process is found by it.
MARKER = "47.25"


@pytest.fixture
def own_engine(tmp_path: Path) -> Iterator[ContainerEngine]:
    for program in ("podman", "runc", "busybox"):
        if subprocess.run(["which", program], capture_output=True, check=False).returncode:
            pytest.skip(f"{program} is not installed (run `make system-packages`)")
    engine = ContainerEngine(tmp_path / "podman", insecure_registries=[])
    engine.start()
    try:
        yield engine
    finally:
        engine.stop(purge=True)


def marker_processes() -> list[int]:
    """Host pids whose command line is the RUN step's ``sleep MARKER``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", MARKER.encode()]:
            found.append(int(proc.name))
    return found


def engine_containers(engine: ContainerEngine) -> list[str]:
    """Every container the engine knows, build containers (``--external``) included."""
    argv = [
        "podman",
        "--root",
        str(engine.root),
        "--runroot",
        str(engine.runroot),
        "ps",
        "--all",
        "--external",
        "--format",
        "{{.ID}} {{.Status}}",
    ]
    listed = subprocess.run(
        argv, env=engine.env(), capture_output=True, text=True, timeout=60, check=True
    )
    return [line for line in listed.stdout.splitlines() if line.strip()]


class RestartWhenRunStepRuns(threading.Thread):
    """Restarts the engine's service once the RUN step's process exists."""

    def __init__(self, engine: ContainerEngine, timeout: float) -> None:
        super().__init__(daemon=True)
        self.engine = engine
        self.deadline = time.monotonic() + timeout
        self.restarted = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                if marker_processes():
                    self.engine.stop()
                    self.engine.start()
                    self.restarted = True
                    return
                time.sleep(0.05)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def test_an_engine_restart_mid_build_fails_the_build_clearly_and_leaves_nothing_running(
    own_engine: ContainerEngine, tmp_path: Path
) -> None:
    client = docker.DockerClient(base_url=own_engine.docker_host, timeout=120)
    try:
        (tmp_path / "busybox").mkdir()
        base = build_busybox(client, tmp_path / "busybox")
    finally:
        client.close()
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {base}\nRUN sleep {MARKER}\n")
    restarter = RestartWhenRunStepRuns(own_engine, timeout=120)
    restarter.start()
    result = build_all(
        context, [Image(name="api")], "e4e4e4", own_engine.docker_host, "acme/faults"
    )
    restarter.join(120)
    assert restarter.error is None, restarter.error
    assert restarter.restarted, "the RUN step never started: nothing was restarted"

    # What the user sees: the build stage failed, naming the image and the engine's error.
    assert result.status == StageStatus.FAILED, result.detail
    assert result.detail.startswith("api: build failed:"), result.detail
    # Nothing left running: the step's process and every container of the build are gone.
    wait_for(lambda: not marker_processes(), "the RUN step's process is gone", 30)
    assert engine_containers(own_engine) == []
    assert own_engine.is_up()
