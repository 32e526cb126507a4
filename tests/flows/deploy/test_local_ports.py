"""The local deploy target on the real engine: an environment port taken by another program.

A port held by another program is a clear error that names it, and nothing is touched before
that is known: the version that served before still serves, in the same container, never
stopped. The environment port held by our own live container is no such clash: a redeploy swaps
it as always.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import docker
import httpx
import pytest
from docker.models.containers import Container

from core.ports import free_port_block
from flows.config import Image
from flows.deploy.local import LABEL, LocalContainerTarget
from flows.deploy.targets import DeployError, DeployRequest, Environment
from flows.results import StageStatus
from flows.steps.images import build_all, push_all

pytestmark = [pytest.mark.engine, pytest.mark.slow]

HOST = "127.0.0.1"
WEB = Image(name="web")

# Another program: a plain listening socket in a process of its own, not a container.
LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "print('listening', flush=True)\n"
    "time.sleep(600)\n"
)


@contextmanager
def another_program(port: int) -> Iterator[None]:
    process = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "listening", f"could not hold port {port}"
        yield
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def web_versions(
    container_engine: str,
    registry: str,
    busybox_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[str]:
    """Two versions of a web service, pushed, by digest: each answers /healthz with its name."""
    pinned: list[str] = []
    for version in ("v1", "v2"):
        checkout = tmp_path_factory.mktemp(version)
        (checkout / "Dockerfile").write_text(
            f"FROM {busybox_image}\n"
            f"RUN mkdir /www && echo {version} > /www/healthz\n"
            'CMD ["sh", "-c", "exec httpd -f -p \\"$PORT\\" -h /www"]\n'
        )
        built = build_all(checkout, [WEB], version, container_engine, "ports")
        assert built.status == StageStatus.PASSED, built.detail
        pushed = push_all(built, registry)
        assert pushed.status == StageStatus.PASSED, pushed.detail
        pinned.append(str(pushed.data["images"]["web"]["pinned"]))
    return pinned


def serves(port: int) -> str:
    try:
        return httpx.get(f"http://{HOST}:{port}/healthz", timeout=5).text.strip()
    except httpx.HTTPError as exc:
        return f"nothing: {exc!r}"


@pytest.fixture
def deploy(
    container_engine: str, tmp_path: Path
) -> Iterator[Callable[[LocalContainerTarget, str, Environment, str], None]]:
    deployed: list[tuple[LocalContainerTarget, str, Environment]] = []

    def run(target: LocalContainerTarget, slug: str, environment: Environment, ref: str) -> None:
        deployed.append((target, slug, environment))
        request = DeployRequest(
            repository_slug=slug,
            environment=environment,
            images={"web": ref},
            image_specs=[WEB],
            commit_sha="c0ffee",
        )
        asyncio.run(target.deploy(request))

    yield run
    for target, slug, environment in deployed:
        target.remove_environment(slug, environment)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_a_port_taken_by_another_program_fails_the_deploy_and_the_live_version_keeps_serving(
    environment: Environment,
    container_engine: str,
    docker_api: docker.DockerClient,
    web_versions: list[str],
    deploy: Callable[[LocalContainerTarget, str, Environment, str], None],
    tmp_path: Path,
) -> None:
    v1, v2 = web_versions
    slug = f"ports-{environment}"
    base = free_port_block(4)
    state = tmp_path / "state"
    target = LocalContainerTarget(
        container_engine, {"staging": base, "production": base + 1}, state, health_timeout=30
    )
    port = base if environment == "staging" else base + 1
    mine = {"label": [f"{LABEL}.repository={slug}"]}

    # Nothing live yet, the port held: refused, naming the port; no container was made.
    with another_program(port), pytest.raises(DeployError) as first:
        deploy(target, slug, environment, v1)
    assert f"port {port} on {HOST} (for web) is taken by another program" in str(first.value)
    assert docker_api.containers.list(all=True, filters=mine) == []

    # The port free, then held by our own live container: both deploys swap as always.
    deploy(target, slug, environment, v1)
    assert serves(port) == "v1"
    deploy(target, slug, environment, v2)
    assert serves(port) == "v2"
    live = docker_api.containers.get(f"gantry-{slug}-{environment}-web")
    started = live.attrs["State"]["StartedAt"]

    # The environment's port moved (GANTRY_<ENV>_PORT) to one another program holds.
    moved = base + 2
    moved_target = LocalContainerTarget(
        container_engine, {"staging": moved, "production": moved}, state, health_timeout=30
    )
    assert moved_target.url(slug, environment, "web") == f"http://{HOST}:{moved}"
    with another_program(moved), pytest.raises(DeployError) as clash:
        deploy(moved_target, slug, environment, v1)
    assert f"port {moved} on {HOST} (for web) is taken by another program" in str(clash.value)
    assert clash.value.previous_images == {"web": v2}

    # What served before still serves, from the same container, never stopped or renamed.
    assert serves(port) == "v2"
    live.reload()
    assert live.name == f"gantry-{slug}-{environment}-web"
    assert live.status == "running"
    assert live.attrs["State"]["StartedAt"] == started
    assert live.labels[f"{LABEL}.ref"] == v2
    names = {c.name for c in docker_api.containers.list(all=True, filters=mine)}
    assert names == {
        f"gantry-{slug}-{environment}-web",
        f"gantry-{slug}-{environment}-web-previous",
    }


class PortTakenAtTheSwap(LocalContainerTarget):
    """A target whose environment port another program takes the moment the old version lets
    it go: after every check, just before the new version binds it (the fault, made certain)."""

    taken: ExitStack

    def _run(
        self,
        client: docker.DockerClient,
        request: DeployRequest,
        spec: Image,
        ref: str,
        host_port: int,
        role: str,
    ) -> Container:
        if role == "":  # the live container, not the trial one
            self.taken.enter_context(another_program(host_port))
        return super()._run(client, request, spec, ref, host_port, role)


def test_a_port_taken_during_the_swap_fails_clearly_and_leaves_the_old_version_live_by_name(
    container_engine: str,
    docker_api: docker.DockerClient,
    web_versions: list[str],
    deploy: Callable[[LocalContainerTarget, str, Environment, str], None],
    tmp_path: Path,
) -> None:
    v1, v2 = web_versions
    slug, environment = "ports-race", "staging"
    base = free_port_block(2)
    ports = {"staging": base, "production": base + 1}
    state = tmp_path / "state"
    target = LocalContainerTarget(container_engine, ports, state, health_timeout=30)
    deploy(target, slug, "staging", v1)
    assert serves(base) == "v1"
    live_name = f"gantry-{slug}-{environment}-web"

    racing = PortTakenAtTheSwap(container_engine, ports, state, health_timeout=30)
    with ExitStack() as racing.taken, pytest.raises(DeployError) as raced:
        deploy(racing, slug, "staging", v2)
    message = str(raced.value)
    assert f"web could not start on port {base}" in message
    # The old version could not bind its port either: said, and not called "still serves".
    assert "the previous version could not start again" in message
    assert "still serves" not in message and not raced.value.rolled_back
    assert raced.value.previous_images == {"web": v1}
    # Nothing of v2 passes for the live version: the live name is v1's container again.
    mine = {"label": [f"{LABEL}.repository={slug}"]}
    containers = docker_api.containers.list(all=True, filters=mine)
    assert [(c.name, c.labels[f"{LABEL}.ref"]) for c in containers] == [(live_name, v1)]

    # The program gone, the next deploy sees v1 as what served, and swaps as always.
    deploy(target, slug, "staging", v2)
    assert serves(base) == "v2"
    previous = docker_api.containers.get(f"{live_name}-previous")
    assert previous.labels[f"{LABEL}.ref"] == v1
