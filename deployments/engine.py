"""The container engine of the local stack: Podman serving the Docker Engine API on a socket.

Everything Podman keeps (images, containers, layers, its socket and our configuration) lives
under one state folder, and its runtime files and locks in a short temp folder of its own, so
that the stack never touches the machine's own Podman (nor another stack's engine) and
``stop(purge=True)`` can remove it all. The configuration is written by us and handed to the
service through ``CONTAINERS_CONF`` / ``CONTAINERS_REGISTRIES_CONF``: ``runc`` with explicit
rlimits (``crun`` and default rlimits fail on hosts with hybrid cgroups), no short-name search
and docker.io blocked (nothing may be pulled from the internet), the local registry as plain
HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import httpx

from core.mounts import unmount_under
from core.ports import StackError, wait_until
from core.settings import StackSettings
from deployments import engine_leftovers
from deployments.engine_registry import Registry, RegistryError
from deployments.processes import ManagedProcess

__all__ = [
    "ContainerEngine",
    "EngineError",
    "Registry",
    "RegistryError",
    "containers_conf",
    "registries_conf",
]

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = "{tmp_dir}"
"""


class EngineError(StackError):
    """The container engine could not be started, reached or stopped."""


def containers_conf(tmp_dir: Path) -> str:
    """``containers.conf``: runc, cgroupfs and explicit ulimits (runc fails without them).

    By default every Podman on a machine shares ``/run/libpod`` (its "alive" marker) and one
    shared-memory lock table. Then resetting one engine makes another believe the machine
    rebooted: it "refreshes" its containers without tearing down their networks, and their
    port forwarding rules stay behind, sending later traffic for those ports nowhere. So each
    engine keeps its runtime files and locks in a folder of its own.
    """
    return CONTAINERS_CONF.format(tmp_dir=tmp_dir)


def registries_conf(insecure: Sequence[str]) -> str:
    """``registries.conf``: no short-name search, docker.io blocked, ``insecure`` over HTTP."""
    lines = ["unqualified-search-registries = []", 'short-name-mode = "enforcing"', ""]
    for location in dict.fromkeys(insecure):
        lines += ["[[registry]]", f'location = "{location}"', "insecure = true", ""]
    lines += ["[[registry]]", 'location = "docker.io"', "blocked = true", ""]
    return "\n".join(lines)


class ContainerEngine:
    """Start, find and stop ``podman system service`` for one state folder.

    ``insecure_registries`` are reached over plain HTTP; Podman reads this list once at start,
    so every loopback registry the engine pushes to must be named here.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        insecure_registries: Sequence[str] | None = None,
        podman: str = "podman",
    ) -> None:
        settings = StackSettings()
        self.state_dir = (state_dir or settings.state_dir / "podman").resolve()
        self.insecure_registries = list(
            insecure_registries if insecure_registries is not None else [settings.registry_address]
        )
        self.podman = podman
        self.process = ManagedProcess("podman", self.state_dir, json_logs=True)

    @property
    def socket(self) -> Path:
        return self.state_dir / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def root(self) -> Path:
        return self.state_dir / "root"

    @property
    def runroot(self) -> Path:
        # Podman refuses a runroot longer than 50 characters; runtime state belongs in a
        # short temp path anyway. Named after the state folder, so each engine has its own.
        key = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"gantry-podman-{key}"

    @property
    def containers_conf_path(self) -> Path:
        return self.state_dir / "containers.conf"

    @property
    def registries_conf_path(self) -> Path:
        return self.state_dir / "registries.conf"

    def env(self) -> dict[str, str]:
        """The environment for every ``podman`` command on this state folder."""
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.containers_conf_path)
        env["CONTAINERS_REGISTRIES_CONF"] = str(self.registries_conf_path)
        return env

    def _podman(self, *args: str) -> list[str]:
        return [self.podman, "--root", str(self.root), "--runroot", str(self.runroot), *args]

    def is_up(self, timeout: float = 2.0) -> bool:
        """True when something answers the Docker API ``/_ping`` on our socket."""
        if not self.socket.exists():
            return False
        transport = httpx.HTTPTransport(uds=str(self.socket))
        try:
            with httpx.Client(transport=transport, timeout=timeout) as client:
                response = client.get("http://podman/_ping")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start(self, timeout: float = 60.0) -> str:
        """Start the service unless ours already runs; returns the ``DOCKER_HOST`` url."""
        if self.process.running():
            if not wait_until(self.is_up, timeout, 0.2):
                raise EngineError(
                    f"the container engine (pid {self.process.pid()}) does not answer on "
                    f"{self.socket}; see {self.process.log_file}"
                )
            return self.docker_host
        if self.is_up():
            raise EngineError(
                f"another program already serves {self.socket}; stop it or choose another "
                "state folder"
            )
        if shutil.which(self.podman) is None:
            raise EngineError(
                f"{self.podman!r} is not installed; run `make system-packages` "
                "(Debian: podman, runc)"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.containers_conf_path.write_text(containers_conf(self.runroot / "libpod"))
        self.registries_conf_path.write_text(registries_conf(self.insecure_registries))
        self.socket.unlink(missing_ok=True)
        argv = self._podman("system", "service", "--time=0", self.docker_host)
        self.process.start(argv, self.env(), cwd=self.state_dir)
        if not wait_until(lambda: self.is_up() or not self.process.running(), timeout, 0.1):
            tail = self.process.log_tail()
            self.process.stop()
            raise EngineError(
                f"the container engine did not answer on {self.socket} in {timeout:.0f} s:\n{tail}"
            )
        if not self.is_up():
            tail = self.process.log_tail()
            self.process.stop()
            raise EngineError(f"the container engine exited at start:\n{tail}")
        return self.docker_host

    def stop(self, purge: bool = False, timeout: float = 30.0) -> bool:
        """Stop the service we started; with ``purge``, reset and delete its storage.

        Returns True when a running service was stopped.
        """
        stopped = self.process.stop(timeout=timeout)
        if purge and self.state_dir.exists():
            # Podman's layers hold mounts and read-only files: let Podman undo its own state.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    self._podman("system", "reset", "-f"),
                    env=self.env(),
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
            unmount_under(self.state_dir)
            shutil.rmtree(self.state_dir, ignore_errors=True)
            shutil.rmtree(self.runroot, ignore_errors=True)
        else:
            self.socket.unlink(missing_ok=True)
            # Runtime state and the storage's own mounts outlive the service only while
            # containers (conmon) still use them; idle, they would pin the folder.
            if not _in_use(self.runroot):
                unmount_under(self.root)
                shutil.rmtree(self.runroot, ignore_errors=True)
        return stopped

    # -- containers, through the podman command: it works whether the service runs or not ----
    def _cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._podman(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def has_storage(self) -> bool:
        return (self.root / "libpod").is_dir() and self.containers_conf_path.exists()

    def containers(self, label: str, running: bool = True) -> list[dict[str, Any]]:
        """Containers carrying ``label`` (``key`` or ``key=value``): Podman's ``ps`` JSON."""
        if not self.has_storage():
            return []
        args = ["ps", "--format", "json", "--filter", f"label={label}"]
        result = self._cli(*args) if running else self._cli(*args, "--all")
        if result.returncode != 0:
            raise EngineError(f"listing containers failed: {result.stderr.strip()[-500:]}")
        parsed: list[dict[str, Any]] = json.loads(result.stdout or "[]")
        return parsed

    def _each(self, verb: Sequence[str], ids: Collection[str]) -> None:
        if not ids:
            return
        result = self._cli(*verb, *ids)
        if result.returncode != 0:
            raise EngineError(f"podman {verb[0]} failed: {result.stderr.strip()[-500:]}")

    def stop_containers(self, ids: Collection[str], timeout: int = 10) -> None:
        """Stop through Podman, so that each container's cleanup takes its network down."""
        self._each(["stop", "--time", str(timeout)], ids)

    def start_containers(self, ids: Collection[str]) -> None:
        self._each(["start"], ids)

    def remove_containers(self, ids: Collection[str]) -> None:
        self._each(["rm", "--force", "--time", "10"], ids)

    def reap_leftovers(self, needed_ports: Collection[int] = ()) -> list[str]:
        """Remove what other (crashed or removed) Gantry engines left running; what was removed.

        Reaped: containers whose engine's database is gone (their stack's folder was removed),
        containers of a stopped engine that hold one of ``needed_ports``, and the port
        forwarding of containers killed without their cleanup. A stack whose engine serves
        is live: its containers are never touched. Call it before this engine starts: a folder
        removed and made anew has the same runtime folder as before.
        """
        removed: list[str] = []
        gone: list[engine_leftovers.EngineContainer] = []
        wanted = set(needed_ports)
        for container in engine_leftovers.gantry_containers():
            what = container.describe()
            if container.orphaned():
                errors = engine_leftovers.remove_orphan(container)
                gone.append(container)
            elif (
                container.root != self.root
                and wanted & container.host_ports()
                and not engine_leftovers.engine_serving(container.root)
            ):
                other = ContainerEngine(container.engine_dir, insecure_registries=[])
                try:
                    other.remove_containers([container.container_id])
                    errors = []
                except EngineError as exc:
                    errors = [str(exc)]
            else:
                continue
            removed.append(what + (f" (not all undone: {'; '.join(errors)})" if errors else ""))
        live = engine_leftovers.running_container_ids()
        leaks = engine_leftovers.leaked_forwarding(time.time(), live)
        rules = engine_leftovers.forwarding_rules() if leaks else ""
        for path, name, container_id in leaks:
            errors = engine_leftovers.remove_leaked_forwarding(path)
            if container_id in rules or errors:  # a stale record alone is not worth a line
                note = f" (not all undone: {'; '.join(errors)})" if errors else ""
                removed.append(f"port forwarding of the gone container {name}{note}")
        engine_leftovers.tidy_engine_folders(gone)
        return removed


def _in_use(path: Path) -> bool:
    """True when a running process names ``path`` on its command line (conmon does)."""
    return engine_leftovers.in_use(path)
