"""Starting and stopping the local stack's engine and registry: idempotent, exact, clear errors."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import docker
import httpx
import pytest

from core.ports import free_port, wait_until
from deployments.engine import ContainerEngine, EngineError, registries_conf
from deployments.engine_registry import Registry, RegistryError
from tests.plugins.engine import build_busybox

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


def _answers(url: str, expected: str, timeout: float = 20.0) -> bool:
    def says() -> bool:
        try:
            return httpx.get(url, timeout=3).text.strip() == expected
        except httpx.HTTPError:
            return False

    return wait_until(says, timeout)


def test_purging_one_engine_leaves_another_able_to_release_its_ports(tmp_path: Path) -> None:
    # Engines on one machine once shared Podman's runtime folder: purging one made the other
    # "refresh" its containers without tearing down their port forwarding, and a port a
    # container had published then led nowhere, even for a host program listening on it.
    first = ContainerEngine(tmp_path / "first", insecure_registries=[])
    second = ContainerEngine(tmp_path / "second", insecure_registries=[])
    port = free_port()
    try:
        client = docker.DockerClient(base_url=first.start())
        try:
            (tmp_path / "context").mkdir()
            image = build_busybox(client, tmp_path / "context")
            client.containers.run(
                image,
                [
                    "sh",
                    "-c",
                    "mkdir /w && echo container > /w/index.html && httpd -f -p 8080 -h /w",
                ],
                detach=True,
                ports={"8080/tcp": ("127.0.0.1", port)},
            )
            assert _answers(f"http://127.0.0.1:{port}/", "container")
        finally:
            client.close()
        second.start()
        assert second.stop(purge=True)
        assert first.stop(purge=True)

        class Host(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"host"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        try:
            server = http.server.HTTPServer(("127.0.0.1", port), Host)
        except OSError as exc:
            pytest.fail(f"port {port} is still held after both engines were purged: {exc}")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            assert _answers(f"http://127.0.0.1:{port}/", "host", timeout=10), (
                f"port {port} still leads to the purged engine's container"
            )
        finally:
            server.shutdown()
            server.server_close()
    finally:
        second.stop(purge=True)
        first.stop(purge=True)
