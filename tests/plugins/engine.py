"""Session fixtures for the real container engine (Podman's Docker API) and registry.

Podman reads ``registries.conf`` once, when its service starts, and reaches a registry over
plain HTTP only when that registry's address is listed there. So the session reserves a few free
loopback ports up front: one for the ``registry`` fixture and spares for tests that need a
registry of their own (one that starts late, one that requires a password).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import docker
import pytest

from clients.base_image import ensure_base_image
from core.ports import port_is_free
from deployments.engine import ContainerEngine
from deployments.engine_registry import Registry

HOST = "127.0.0.1"
SPARE_PORTS = 4
BUSYBOX_IMAGE = "localhost/gantry-test/busybox:1"


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are bound, so the ports are distinct.
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _require(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (run `make system-packages`)")


@pytest.fixture(scope="session")
def registry_ports() -> list[int]:
    """Loopback ports the engine treats as plain-HTTP registries: [main, spare, ...]."""
    return _free_ports(1 + SPARE_PORTS)


@pytest.fixture(scope="session")
def container_engine(
    tmp_path_factory: pytest.TempPathFactory, registry_ports: list[int]
) -> Iterator[str]:
    """A real Podman Docker API service in a temp state folder; yields its DOCKER_HOST url."""
    _require("podman")
    _require("runc")
    engine = ContainerEngine(
        tmp_path_factory.mktemp("podman"),
        insecure_registries=[f"{HOST}:{port}" for port in registry_ports],
    )
    url = engine.start()
    try:
        yield url
    finally:
        engine.stop(purge=True)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, registry_ports: list[int]) -> Iterator[str]:
    """A real registry (distribution) on a free loopback port; yields ``host:port``."""
    _require("docker-registry")
    server = Registry(tmp_path_factory.mktemp("registry"), registry_ports[0], HOST)
    address = server.start()
    try:
        yield address
    finally:
        server.stop(purge=True)


@pytest.fixture
def spare_registry_port(registry_ports: list[int]) -> Callable[[], int]:
    """Hands out reserved ports (the engine trusts them) that nothing listens on right now."""
    given: set[int] = set()

    def take() -> int:
        for port in registry_ports[1:]:
            if port in given:
                continue
            if not port_is_free(HOST, port):
                continue
            given.add(port)
            return port
        pytest.fail("no reserved registry port is free; raise SPARE_PORTS")

    return take


@pytest.fixture(scope="session")
def docker_api(container_engine: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=container_engine, timeout=300)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_api: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2 MB shell base image built offline from Debian's busybox-static (under a second)."""
    return build_busybox(docker_api, tmp_path_factory.mktemp("busybox"))


def build_busybox(client: docker.DockerClient, context: Path) -> str:
    """Build the busybox base image on ``client``'s engine from ``context`` (an empty folder)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed (run `make system-packages`)")
    shutil.copy2(busybox, context / "busybox")
    (context / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        'CMD ["/bin/sh"]\n'
    )
    client.images.build(path=str(context), tag=BUSYBOX_IMAGE, rm=True, forcerm=True)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def python_base_image(
    docker_api: docker.DockerClient,
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The offline Python base image; pytest's cache keeps its root file system across runs."""
    _require("debootstrap")
    cache = getattr(pytestconfig, "cache", None)  # None under `-p no:cacheprovider`
    cache_dir = cache.mkdir("gantry-python-base") if cache is not None else None
    return ensure_base_image(
        docker_api, cache_dir=Path(cache_dir or tmp_path_factory.mktemp("base"))
    )
