"""Starting and stopping the local stack's engine and registry: idempotent, exact, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import docker
import pytest

from deployments.engine import ContainerEngine, EngineError, registries_conf
from deployments.engine_registry import Registry, RegistryError

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_registries_conf_blocks_docker_io_and_trusts_only_the_named_registries() -> None:
    text = registries_conf(["127.0.0.1:5000"])
    assert "unqualified-search-registries = []" in text
    assert 'location = "docker.io"\nblocked = true' in text
    assert 'location = "127.0.0.1:5000"\ninsecure = true' in text


def test_engine_start_again_reuses_the_running_service(container_engine: str) -> None:
    state_dir = Path(container_engine.removeprefix("unix://")).parent
    engine = ContainerEngine(state_dir)
    pid = engine.process.pid()
    assert pid is not None
    assert engine.start() == container_engine
    assert engine.process.pid() == pid
    assert engine.is_up()


def test_engine_stop_with_purge_stops_the_service_and_removes_its_state(tmp_path: Path) -> None:
    engine = ContainerEngine(tmp_path / "podman", insecure_registries=[])
    url = engine.start()
    client = docker.DockerClient(base_url=url)
    try:
        assert client.ping()
    finally:
        client.close()
    pid = engine.process.pid()
    assert engine.stop(purge=True)
    assert not engine.is_up()
    assert not (tmp_path / "podman").exists()
    assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert not engine.stop(), "a second stop has nothing to stop"


def test_engine_refuses_a_socket_served_by_another_program(container_engine: str) -> None:
    state_dir = Path(container_engine.removeprefix("unix://")).parent
    stranger = ContainerEngine(state_dir)
    # Forget our pid file: the socket now answers, but not for a process we started.
    stranger.process.pid_file.rename(state_dir / "podman.pid.kept")
    try:
        with pytest.raises(EngineError, match="another program already serves"):
            stranger.start(timeout=5)
    finally:
        (state_dir / "podman.pid.kept").rename(stranger.process.pid_file)


def test_registry_start_is_idempotent_and_stop_is_exact(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = Registry(tmp_path / "registry", port)
    assert registry.start() == f"127.0.0.1:{port}"
    pid = registry.process.pid()
    assert Registry(tmp_path / "registry", port).start() == registry.address
    assert registry.process.pid() == pid
    assert registry.stop()
    assert not registry.is_up()
    assert not registry.stop()


def test_registry_on_a_port_taken_by_another_program_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        registry = Registry(tmp_path / "registry", port)
        with pytest.raises(RegistryError, match=f"port {port} on 127.0.0.1 is taken"):
            registry.start()
        assert not registry.process.running()


def test_engine_stop_keeps_images_but_drops_idle_runtime_state(tmp_path: Path) -> None:
    engine = ContainerEngine(tmp_path / "podman", insecure_registries=[])
    try:
        engine.start()
        assert engine.runroot.exists()
        assert f"{engine.root}/" in Path("/proc/mounts").read_text()
        assert engine.stop()
        assert not engine.runroot.exists(), "no container runs: nothing needs the runtime state"
        mounts = Path("/proc/mounts").read_text()
        assert f"{engine.root}/" not in mounts, "no storage mount pins the state folder"
        assert (tmp_path / "podman" / "containers.conf").exists()
        assert engine.start() == engine.docker_host, "a stopped engine starts again"
    finally:
        engine.stop(purge=True)
