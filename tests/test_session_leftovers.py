"""A killed test session's servers, mounts and containers are removed by the next session.

Real processes stand in for a dead session's servers (a process that names its folder on its
command line, one that works in it, one whose environment names it), a real tmpfs mount for its
engine's storage, and a real Podman engine and container for its environments.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import docker
import pytest

from core.ports import free_port
from deployments.engine import ContainerEngine
from tests.plugins import leftovers
from tests.plugins.deadlines import pids_with, wait_for
from tests.plugins.engine import build_busybox
from tests.webhooks.postgres import postgres_bin, throwaway_postgres

SLEEP = [sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))", "300"]


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts in sessions of their own (as a killed session's servers are)."""
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for process in made:
        process.kill()
        process.wait(10)


def spawn(
    made: list[subprocess.Popen[bytes]],
    *extra: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> int:
    process = subprocess.Popen([*SLEEP, *extra], cwd=cwd, env=env, start_new_session=True)
    made.append(process)
    return int(process.pid)


def dead_owner(folder: Path) -> None:
    """Mark ``folder`` as made by a session that has since died."""
    process = subprocess.Popen(SLEEP)
    leftovers.mark(folder, process.pid)
    process.kill()
    process.wait(10)


def exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def mounted_under(folder: Path) -> list[str]:
    prefix = f"{folder.resolve()}/"
    return [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefix)
    ]


def test_a_dead_sessions_processes_and_mounts_go_and_a_live_sessions_stay(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the CI machine runs the suite as root)")
    root = tmp_path / "pytest-of-someone"
    dead, live, renamed, unowned = (root / n for n in ("pytest-7", "pytest-8", "garbage-1", "x"))
    for folder in (dead, live, unowned):
        (folder / "podman" / "storage").mkdir(parents=True)
    dead_owner(dead)
    leftovers.mark(live)  # this session: alive
    # pytest renamed this folder to delete it; its processes still name it as it was.
    was = root / "pytest-6"
    was.mkdir()
    dead_owner(was)
    was.rename(renamed)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(dead / "podman" / "storage")], check=True)

    named = spawn(spawned, str(dead / "prefect" / "server.log"))
    # What the session started carries its folder in the environment (the session fixture).
    environ = spawn(spawned, env={**os.environ, leftovers.SESSION_VARIABLE: f"{dead.resolve()}/"})
    # Someone's shell, opened in the folder to look: not the session's.
    looking = spawn(spawned, cwd=dead / "podman")
    renamed_one = spawn(spawned, str(was / "registry"))
    kept = spawn(spawned, str(live / "prefect"))
    unowned_one = spawn(spawned, str(unowned / "prefect"))
    by_pid = {p.pid: p for p in spawned}

    done = leftovers.reap_dead_sessions(root)

    for pid in (named, environ, renamed_one):
        wait_for(f"process {pid} is killed", lambda p=pid: exited(by_pid[p]), 10)  # type: ignore[misc]
    assert not dead.exists() and not renamed.exists()
    assert not mounted_under(root)
    assert any("killed 2 process(es)" in line for line in done), done
    # A live session's folder and processes, and a folder nobody owns, are not touched.
    assert live.is_dir() and unowned.is_dir()
    assert not exited(by_pid[kept]) and not exited(by_pid[unowned_one])
    assert not exited(by_pid[looking])
    # Nothing left to do: a second pass reaps nothing.
    assert leftovers.reap_dead_sessions(root) == []


def test_the_owner_is_the_process_not_only_its_pid(tmp_path: Path) -> None:
    leftovers.mark(tmp_path)
    owner = leftovers.owner_of(tmp_path)
    assert owner is not None and owner.alive() and owner.pid == os.getpid()
    # The same pid with another start time is another process (the pid was reused).
    assert not leftovers.Owner(owner.pid, str(int(owner.started) + 1), owner.folder).alive()
    (tmp_path / leftovers.OWNER_FILE).write_text("not json")
    assert leftovers.owner_of(tmp_path) is None


@pytest.mark.slow
def test_a_dead_sessions_postgresql_kept_outside_its_folder_is_stopped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed (run `make install`)")
    root = tmp_path / "pytest-of-someone"
    dead = root / "pytest-5"
    dead.mkdir(parents=True)
    # As the session fixture sets it: what the session starts names its folder.
    monkeypatch.setenv(leftovers.SESSION_VARIABLE, f"{dead.resolve()}/")
    with ExitStack() as server:
        url = server.enter_context(throwaway_postgres())
        port = url.rsplit(":", 1)[1].split("/")[0]
        assert pids_with(f"-p {port} "), "PostgreSQL runs"
        dead_owner(dead)

        leftovers.reap_dead_sessions(root)

        wait_for("PostgreSQL is stopped", lambda: not pids_with(f"-p {port} "), 10)
        assert not dead.exists()
        # Its own teardown finds no server to stop: that is what the reaper did.
        with pytest.raises(subprocess.CalledProcessError):
            server.close()


@pytest.mark.slow
@pytest.mark.engine
def test_a_dead_sessions_engine_and_container_go_with_its_port_and_forwarding(
    tmp_path: Path,
) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (run `make system-packages`)")
    root = tmp_path / "r"  # short: the engine's socket path must fit in 108 bytes
    dead = root / "pytest-3"
    dead.mkdir(parents=True)
    port = free_port()
    engine = ContainerEngine(dead / "podman0", insecure_registries=[])
    idle = ContainerEngine(dead / "podman1", insecure_registries=[])  # one with no container
    try:
        idle.start()
        engine.start()
        with closing(docker.DockerClient(base_url=engine.docker_host, timeout=300)) as client:
            (tmp_path / "image").mkdir()
            image = build_busybox(client, tmp_path / "image")
            client.containers.run(
                image,
                ["httpd", "-f", "-p", "8000"],
                name="gantry-left-staging-web",
                detach=True,
                ports={"8000/tcp": ("127.0.0.1", port)},
            )
        wait_for("the container holds its port", lambda: pids_with(str(engine.root)) != [], 30)
        dead_owner(dead)  # the session is killed: no fixture stops its engine

        done = leftovers.reap_dead_sessions(root)

        assert not pids_with(str(dead)), "a process of the killed session runs on"
        assert any("gantry-left-staging-web" in line for line in done), done
        assert not dead.exists()
        # The engines' runtime folders, kept outside the session's, go too.
        assert not engine.runroot.exists() and not idle.runroot.exists()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # the port is free again
    finally:
        for started in (engine, idle):
            if started.state_dir.exists():
                started.stop(purge=True)
