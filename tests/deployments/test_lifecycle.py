"""Nothing left running: `gantry down` ends in-flight runs, sandboxes and environments; `gantry up`
reaps what a removed stack left on the machine (containers, their port forwarding).

The end-to-end test uses stacks of its own (throwaway state folders, own ports): it stops and
removes them, which the session stack shared by other tests must never suffer.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from uuid import UUID, uuid4

import docker
import httpx
import pytest

from core.ports import free_port
from core.settings import PR_DEPLOYMENT, StackSettings
from deployments import engine_leftovers
from deployments.engine import ContainerEngine
from deployments.stack import Stack, prefect_client_settings
from tests.plugins.deadlines import pids_with, wait_for
from tests.plugins.engine import build_busybox
from tests.plugins.gitrepo import GitRepo, gantry_toml
from tests.plugins.stack import as_json, free_port_pair, gantry, stack_environment
from webhooks.signature import sign

HOST = "127.0.0.1"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    # Connecting, not binding: the connections just closed linger in TIME_WAIT on the port.
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def forwarding_to(port: int) -> list[str]:
    """NAT rules (Podman's CNI port forwarding) that name ``port``."""
    rules = engine_leftovers.forwarding_rules().splitlines()
    return [rule for rule in rules if str(port) in rule.replace(":", " ").split()]


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- a web server image, on the engine it runs on ---------------------------------------------
def build_web(client: docker.DockerClient, context: Path) -> str:
    """busybox httpd serving one page on port 8000: a service an environment can run."""
    (context / "base").mkdir(parents=True, exist_ok=True)
    base = build_busybox(client, context / "base")
    (context / "index.html").write_text("ok\n")
    (context / "Dockerfile").write_text(
        f"FROM {base}\nCOPY index.html /www/index.html\n"
        'CMD ["httpd", "-f", "-p", "8000", "-h", "/www"]\n'
    )
    client.images.build(path=str(context), tag="localhost/gantry-test/web:1", rm=True)
    return "localhost/gantry-test/web:1"


def run_environment(client: docker.DockerClient, image: str, port: int, name: str) -> str:
    """A container as the local deploy target labels it (flows/deploy/local.py)."""
    container = client.containers.run(
        image,
        name=name,
        detach=True,
        labels={
            "dev.gantry.repository": "life",
            "dev.gantry.environment": "staging",
            "dev.gantry.image": "web",
            "dev.gantry.ref": image,
            "dev.gantry.role": "live",
        },
        ports={"8000/tcp": (HOST, port)},
    )
    return str(container.id)


# -- fast: what the reaper reads -------------------------------------------------------------
def cache_file(folder: Path, container_id: str, name: str, port: int) -> Path:
    network = {"cniVersion": "0.4.0", "name": "podman", "plugins": [{"type": "portmap"}]}
    cache = {
        "kind": "cniCacheV1",
        "containerId": container_id,
        "config": base64.b64encode(json.dumps(network).encode()).decode(),
        "ifName": "eth0",
        "networkName": "podman",
        "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAME", name]],
        "capabilityArgs": {"portMappings": [{"hostPort": port, "containerPort": 8000}]},
    }
    path = folder / f"podman-{container_id}-eth0"
    path.write_text(json.dumps(cache))
    return path


def test_leaked_forwarding_is_only_a_gone_gantry_container_that_published_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_leftovers, "CNI_RESULTS", tmp_path)
    gone = cache_file(tmp_path, "a" * 64, "gantry-svc-staging-web", 18801)
    cache_file(tmp_path, "b" * 64, "gantry-svc-staging-web", 18803)  # still monitored
    cache_file(tmp_path, "c" * 64, "someone-elses", 18805)  # not Gantry's
    young = cache_file(tmp_path, "d" * 64, "gantry-svc-production-web", 18807)
    now = time.time()
    for path in tmp_path.iterdir():
        if path != young:  # "d" was just made: its network is set up before its conmon starts
            os.utime(path, (now - 600, now - 600))
    leaks = engine_leftovers.leaked_forwarding(now, live_ids={"b" * 64})
    assert [(path.name, name) for path, name, _ in leaks] == [(gone.name, "gantry-svc-staging-web")]


def test_a_conmon_command_line_names_the_container_and_its_engine() -> None:
    argv = [
        "/usr/bin/conmon", "-c", "f" * 64, "-n", "gantry-svc-staging-web", "-r", "/usr/bin/runc",
        "--exit-command", "/usr/bin/podman",
        "--exit-command-arg", "--root", "--exit-command-arg", "/home/x/.gantry/podman/root",
        "--exit-command-arg", "--runroot", "--exit-command-arg", "/tmp/gantry-podman-0123",
    ]  # fmt: skip
    container = engine_leftovers._parse_conmon(42, argv)
    assert container is not None
    assert container.container_id == "f" * 64
    assert container.stack_dir == Path("/home/x/.gantry")
    assert container.runroot == Path("/tmp/gantry-podman-0123")
    # No database under a removed folder: nobody can clean this container up but the reaper.
    assert container.orphaned()


# -- real engines ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.engine
def test_up_reaps_a_removed_engines_container_and_its_forwarding_never_a_live_ones(
    tmp_path: Path,
) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (run `make system-packages`)")
    removed_port, live_port = free_port(), free_port()
    gone = ContainerEngine(tmp_path / "gone" / "podman", insecure_registries=[])
    live = ContainerEngine(tmp_path / "live" / "podman", insecure_registries=[])
    mine = ContainerEngine(tmp_path / "mine" / "podman", insecure_registries=[])
    try:
        for engine in (gone, live):
            engine.start()
            with closing(docker.DockerClient(base_url=engine.docker_host, timeout=300)) as client:
                image = build_web(client, tmp_path / "web" / engine.state_dir.parent.name)
                port = removed_port if engine is gone else live_port
                run_environment(client, image, port, "gantry-life-staging-web")
            wait_for("the environment answers", lambda p=port: answers(p), 60)  # type: ignore[misc]
        # A stack removed without `gantry down`: its engine stopped, its folder deleted.
        gone.stop()
        shutil.rmtree(gone.state_dir.parent, ignore_errors=True)
        # The folder took the orphan's image layers with it: once the kernel drops their cached
        # entries, its files are gone. Its process and forwarding are not, nor the port it holds.
        assert listening(removed_port), "the orphan still accepts: what the reaper is for"
        assert not port_free(removed_port), "the orphan still holds its port"

        removed = mine.reap_leftovers({removed_port, live_port})

        assert any(f"gantry-life-staging-web (port {removed_port})" in r for r in removed)
        assert not pids_with(str(gone.root)), "a process of the removed stack runs on"
        assert port_free(removed_port)
        assert not forwarding_to(removed_port)
        assert not (tmp_path / "gone" / "podman" / "root").exists()
        # The live stack's container holds a port "mine" needs, and is left alone all the same.
        assert answers(live_port)
        assert not any(str(live_port) in r for r in removed)
        # The port serves a new container at once: no forwarding sends it elsewhere.
        mine.start()
        with closing(docker.DockerClient(base_url=mine.docker_host, timeout=300)) as client:
            image = build_web(client, tmp_path / "web" / "mine")
            run_environment(client, image, removed_port, "gantry-life-staging-web")
        wait_for("a new container answers on the reaped port", lambda: answers(removed_port), 60)
    finally:
        for engine in (mine, live, gone):
            if engine.state_dir.exists():
                engine.stop(purge=True)
        # Whatever the test leaves, the reaper of a next run removes; but leave nothing.
        ContainerEngine(tmp_path / "sweep" / "podman", insecure_registries=[]).reap_leftovers()


# -- the Done-when scenario ------------------------------------------------------------------
@pytest.fixture
def stack_settings(tmp_path: Path) -> Iterator[Callable[[str], StackSettings]]:
    """Settings of throwaway stacks sharing one set of ports (as `make clean; make demo` does)."""
    staging = free_port_pair()
    prefect, webhook, registry = free_port(), free_port(), free_port()
    made: list[StackSettings] = []

    def make(name: str) -> StackSettings:
        settings = StackSettings(
            home=tmp_path / name,
            prefect_port=prefect,
            webhook_port=webhook,
            registry_port=registry,
            staging_port=staging,
            production_port=staging + 1,
        )
        made.append(settings)
        return settings

    yield make
    for settings in made:
        if settings.state_dir.exists():
            Stack(settings).down(purge=True)


def cli(settings: StackSettings, *args: str) -> subprocess.CompletedProcess[str]:
    # No GANTRY_WEBHOOK_SECRET (the session stack sets one): `up` generates the stack's own.
    saved = {key: os.environ.get(key) for key in [*stack_environment(settings), SECRET_VARIABLE]}
    os.environ.pop(SECRET_VARIABLE, None)
    os.environ.update(stack_environment(settings))
    try:
        return gantry(None, *args, home=settings.state_dir, timeout=900)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


SECRET_VARIABLE = "GANTRY_WEBHOOK_SECRET"


def ping(settings: StackSettings, secret: str) -> httpx.Response:
    """A GitHub ping delivery to the stack's receiver, signed with ``secret``."""
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 7}).encode()
    headers = {
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": str(uuid4()),
        "X-Hub-Signature-256": sign(secret, body),
        "Content-Type": "application/json",
    }
    return httpx.post(settings.webhook_url, content=body, headers=headers, timeout=10)


def start_sleeping_run(settings: StackSettings, repo: GitRepo, marker: str) -> UUID:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    sleep = [sys.executable, "-c", "import time; time.sleep(600)", marker]
    sha = repo.commit({"gantry.toml": gantry_toml(lint=None, unit=sleep)})
    with prefect_client_settings(settings):
        # Outside an event loop Prefect runs it synchronously.
        run = run_deployment(
            PR_DEPLOYMENT, parameters={"repository": str(repo.path), "sha": sha}, timeout=0
        )
    assert isinstance(run, FlowRun)
    return run.id


@pytest.mark.slow
@pytest.mark.engine
def test_down_then_removing_the_folder_leaves_nothing_and_a_new_stack_serves_the_same_ports(
    stack_settings: Callable[[str], StackSettings], tmp_path: Path
) -> None:
    first = stack_settings("first")
    port = first.staging_port
    assert cli(first, "up", "--json").returncode == 0
    # Without GANTRY_WEBHOOK_SECRET, `up` generated one into the state folder (0600), and its
    # receiver verifies deliveries with exactly that secret.
    secret_file = first.state_dir / "webhook-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", secret), "32 random bytes, hex"
    answer = ping(first, secret)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "pong"
    assert ping(first, "not-the-" + secret).status_code == 401
    # Generated once: a second `up` keeps it.
    assert cli(first, "up", "--json").returncode == 0
    assert secret_file.read_text().strip() == secret
    assert ping(first, secret).status_code == 200
    stack = Stack(first)
    with closing(docker.DockerClient(base_url=stack.engine.docker_host, timeout=300)) as client:
        image = build_web(client, tmp_path / "web-first")
        run_environment(client, image, port, "gantry-life-staging-web")
    wait_for("staging answers", lambda: answers(port), 60)
    marker = f"gantry-lifecycle-{os.getpid()}"
    run_id = start_sleeping_run(first, GitRepo(tmp_path / "repo"), marker)
    wait_for("the step runs", lambda: pids_with(marker), 240)

    # --keep-environments: the run is cancelled and its step gone, staging serves on.
    result = cli(first, "down", "--keep-environments", "--json")
    assert result.returncode == 0, result.stderr
    report = as_json(result)
    cancelled = report["cancelled_runs"]
    assert any(str(run_id) in run and "Cancelled" in run for run in cancelled), report
    assert not pids_with(marker), "the cancelled run's step runs on"
    assert report["environments_stopped"] == []
    assert {"worker", "engine", "prefect-server"} <= set(report["stopped"])
    assert answers(port)
    # What `up` started is down: `status` says so (exit 1), the control plane's ports are free.
    status = cli(first, "status", "--json")
    assert status.returncode == 1, status.stdout + status.stderr
    parts = as_json(status)["parts"]
    for part in (
        "prefect-server",
        "worker",
        "webhooks",
        "webhook-dispatcher",
        "engine",
        "registry",
    ):
        assert parts[part]["up"] is False, (part, parts[part])
    for freed in (first.prefect_port, first.webhook_port, first.registry_port):
        assert not listening(freed), f"something still listens on port {freed} after down"

    # The folder removed with staging still serving: the next stack's `up` reaps it.
    shutil.rmtree(first.state_dir, ignore_errors=True)
    second = stack_settings("second")
    result = cli(second, "up")
    assert result.returncode == 0, result.stderr
    assert "removed container gantry-life-staging-web" in result.stderr
    assert not pids_with(str(first.state_dir)), "a process of the removed stack runs on"
    assert not forwarding_to(port)
    # ...and serves on the same port.
    with closing(
        docker.DockerClient(base_url=Stack(second).engine.docker_host, timeout=300)
    ) as client:
        image = build_web(client, tmp_path / "web-second")
        run_environment(client, image, port, "gantry-life-staging-web")
    wait_for("the new stack's staging answers on the same port", lambda: answers(port), 60)

    # A plain `gantry down` stops the environments; with the folder gone nothing is left.
    result = cli(second, "down", "--json")
    assert result.returncode == 0, result.stderr
    assert as_json(result)["environments_stopped"] == ["gantry-life-staging-web"]
    assert not answers(port)
    # The next `gantry up` serves again what `gantry down` stopped.
    result = cli(second, "up")
    assert result.returncode == 0, result.stderr
    assert "starting the 1 environment container(s) `gantry down` stopped" in result.stderr
    wait_for("staging serves again after up", lambda: answers(port), 60)
    result = cli(second, "down", "--json")
    assert result.returncode == 0, result.stderr
    assert as_json(result)["environments_stopped"] == ["gantry-life-staging-web"]
    shutil.rmtree(second.state_dir, ignore_errors=True)
    assert not pids_with(str(second.state_dir))
    assert all(c.stack_dir != second.state_dir for c in engine_leftovers.gantry_containers())
    assert not forwarding_to(port)
    assert port_free(port)
