"""The Prefect server of the local stack (SQLite in the state folder, loopback only, and
authenticated: see ``StackSettings.api_auth_string``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from core.logconfig import logging_env
from core.ports import StackError, port_is_free, wait_until
from core.settings import StackSettings, prefect_env
from deployments.processes import ManagedProcess


def venv_bin(name: str) -> str:
    """A console script installed next to this interpreter (the project's .venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def base_env(settings: StackSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(prefect_env(settings))
    # One JSON object per log line, secrets redacted, from the server, the worker and flows.
    env.update(logging_env())
    return env


class PrefectServer:
    """Start, find and stop ``prefect server start`` for one state folder."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.process = ManagedProcess("prefect-server", settings.state_dir / "run", json_logs=True)

    @property
    def url(self) -> str:
        return self.settings.prefect_url

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            response = httpx.get(f"{self.settings.prefect_api_url}/health", timeout=timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start(self, timeout: float = 120.0) -> bool:
        """Start the server unless ours already runs; True when it was started now."""
        if self.process.running():
            if not wait_until(self.healthy, timeout, 0.5):
                raise StackError(
                    f"the Prefect server (pid {self.process.pid()}) does not answer at {self.url}; "
                    f"see {self.process.log_file}"
                )
            return False
        if not port_is_free(self.settings.host, self.settings.prefect_port):
            raise StackError(
                f"port {self.settings.prefect_port} on {self.settings.host} is taken by another "
                "program; stop it or set GANTRY_PREFECT_PORT to a free port"
            )
        env = base_env(self.settings)
        env["PREFECT_SERVER_API_HOST"] = self.settings.host
        env["PREFECT_SERVER_API_PORT"] = str(self.settings.prefect_port)
        # Every API call but /api/health and /api/ready needs the credential (HTTP Basic); the
        # UI asks for it at login. Clients get it as PREFECT_API_AUTH_STRING (prefect_env).
        env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
        Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        argv = [
            venv_bin("prefect"),
            "server",
            "start",
            "--host",
            self.settings.host,
            "--port",
            str(self.settings.prefect_port),
        ]
        self.process.start(argv, env)
        if not wait_until(self.healthy, timeout, 0.5):
            tail = self.process.log_tail()
            self.process.stop()
            raise StackError(
                f"the Prefect server did not become healthy in {timeout:.0f} s:\n{tail}"
            )
        return True

    def stop(self) -> bool:
        return self.process.stop()
