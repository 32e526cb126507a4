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
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from core.mounts import unmount_under
from core.ports import StackError, wait_until
from core.settings import StackSettings
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


def _in_use(path: Path) -> bool:
    """True when a running process names ``path`` on its command line (conmon does)."""
    needle = str(path).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if needle in cmdline.read_bytes():
                return True
    return False
