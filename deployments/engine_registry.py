"""The image registry of the local stack: distribution (``docker-registry``) on loopback.

Debian's packaged configuration listens on every interface and expects a password file; we
write a minimal one of our own that listens on one loopback address and keeps its blobs in the
state folder. An htpasswd file may be given to require authentication (tests use it to pin down
how an authentication failure is reported).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx

from core.ports import StackError, port_is_free, wait_until
from core.settings import StackSettings
from deployments.processes import ManagedProcess


class RegistryError(StackError):
    """The registry could not be started, reached or stopped."""


class Registry:
    """Start, find and stop one ``docker-registry serve`` on a loopback port."""

    def __init__(
        self,
        state_dir: Path | None = None,
        port: int | None = None,
        host: str | None = None,
        htpasswd: Path | None = None,
        program: str = "docker-registry",
    ) -> None:
        settings = StackSettings()
        self.state_dir = (state_dir or settings.state_dir / "registry").resolve()
        self.port = port if port is not None else settings.registry_port
        self.host = host or settings.host
        self.htpasswd = htpasswd.resolve() if htpasswd is not None else None
        self.program = program
        self.process = ManagedProcess("registry", self.state_dir, json_logs=True)

    @property
    def address(self) -> str:
        """``host:port``, as image references and ``registries.conf`` name it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.yml"

    @property
    def storage_dir(self) -> Path:
        return self.state_dir / "storage"

    def config(self) -> dict[str, object]:
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.address},
        }
        if self.htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "gantry", "path": str(self.htpasswd)}}
        return config

    def is_up(self, timeout: float = 2.0) -> bool:
        """True when a registry API answers at our address (401 counts: it is up)."""
        try:
            response = httpx.get(f"{self.url}/v2/", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code in (200, 401)

    def start(self, timeout: float = 30.0) -> str:
        """Start the registry unless ours already runs; returns its address."""
        if self.process.running():
            if not wait_until(self.is_up, timeout, 0.2):
                raise RegistryError(
                    f"the registry (pid {self.process.pid()}) does not answer at {self.url}; "
                    f"see {self.process.log_file}"
                )
            return self.address
        if not port_is_free(self.host, self.port):
            raise RegistryError(
                f"port {self.port} on {self.host} is taken by another program; stop it or set "
                "GANTRY_REGISTRY_PORT to a free port"
            )
        if shutil.which(self.program) is None:
            raise RegistryError(
                f"{self.program!r} is not installed; run `make system-packages` "
                "(Debian: docker-registry)"
            )
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no YAML writer needed, and paths are quoted correctly.
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ)
        # The registry must never reach out (bugsnag/newrelic reporting stay unset).
        env.pop("REGISTRY_HTTP_ADDR", None)
        self.process.start([self.program, "serve", str(self.config_path)], env, self.state_dir)
        if not wait_until(lambda: self.is_up() or not self.process.running(), timeout, 0.1):
            tail = self.process.log_tail()
            self.process.stop()
            raise RegistryError(
                f"the registry did not answer at {self.url} in {timeout:.0f} s:\n{tail}"
            )
        if not self.is_up():
            tail = self.process.log_tail()
            self.process.stop()
            raise RegistryError(f"the registry exited at start:\n{tail}")
        return self.address

    def stop(self, purge: bool = False, timeout: float = 15.0) -> bool:
        """Stop the registry we started; with ``purge``, delete its storage too."""
        stopped = self.process.stop(timeout=timeout)
        if purge:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return stopped
