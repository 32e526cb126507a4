"""Settings of the local stack: one class, read from the environment (``GANTRY_*``).

Every part listens on loopback by default; each port is overridable so that tests and a
running demo never clash.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.redact import register_secret
from core.statefiles import secret_file

# Names of what `prefect.yaml` deploys; the CLI, the webhook dispatcher and tests share them.
WORK_POOL = "gantry-local"
PR_DEPLOYMENT = "pr-pipeline/pr"
MERGE_DEPLOYMENT = "merge-pipeline/merge"
RELEASE_DEPLOYMENT = "release-pipeline/release"

# The Prefect API credential of the local stack, kept in the state folder (core/statefiles.py).
PREFECT_AUTH_FILE = "prefect-auth"
PREFECT_AUTH_USER = "gantry"
# Shorter passwords are refused: the credential guards every run, block and secret.
MIN_AUTH_PASSWORD = 16


# The state folder's name in a project folder; `gantry` finds it from any folder below.
STATE_FOLDER = ".gantry"


def default_home() -> Path:
    """The state folder when GANTRY_HOME is not set.

    The nearest ``.gantry`` folder in the working directory or above it (as git finds ``.git``),
    so every command of a project reaches the same stack from any of its folders; else a
    per-user folder (``$XDG_STATE_HOME/gantry``, default ``~/.local/state/gantry``).
    """
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / STATE_FOLDER).is_dir():
            return folder / STATE_FOLDER
    # The XDG spec says relative values are invalid and must be ignored.
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "gantry"


def generate_auth_string() -> str:
    """A new ``user:password`` for the Prefect API, in the form its UI login accepts."""
    return f"{PREFECT_AUTH_USER}:{secrets.token_urlsafe(32)}"


class StackSettings(BaseSettings):
    """Where the local stack keeps its state and which loopback ports it uses."""

    # hide_input_in_errors: a refused credential must not be echoed in the error.
    model_config = SettingsConfigDict(
        env_prefix="GANTRY_", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(default_factory=default_home, description="state folder")
    host: str = "127.0.0.1"
    prefect_port: int = Field(default=4200, ge=1, le=65535)
    webhook_port: int = Field(default=8787, ge=1, le=65535)
    registry_port: int = Field(default=5000, ge=1, le=65535)
    # Local deploy targets: each environment's service answers on its own loopback port.
    staging_port: int = Field(default=8801, ge=1, le=65535)
    production_port: int = Field(default=8802, ge=1, le=65535)
    work_pool: str = WORK_POOL
    # Flow runs the local worker runs at once (GANTRY_WORKER_LIMIT); more wait in the pool.
    worker_limit: int = Field(default=4, ge=1, le=64)
    # GANTRY_PREFECT_AUTH_STRING: the operator's own Prefect API credential (user:password);
    # unset, one is generated once into the state folder.
    prefect_auth_string: SecretStr | None = None

    @field_validator("prefect_auth_string")
    @classmethod
    def _auth_string_form(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        user, colon, password = value.get_secret_value().strip().partition(":")
        # The message never holds the value: validation errors are printed.
        if not user or not colon or len(password) < MIN_AUTH_PASSWORD:
            raise ValueError(
                "GANTRY_PREFECT_AUTH_STRING must be user:password with a password of at least "
                f"{MIN_AUTH_PASSWORD} characters"
            )
        return SecretStr(value.get_secret_value().strip())

    def api_auth_string(self) -> str:
        """The Prefect API credential (``user:password``), registered for redaction.

        GANTRY_PREFECT_AUTH_STRING when set; otherwise the one generated once (0600) into the
        state folder, so the server and every client of this stack share it.
        """
        if self.prefect_auth_string is not None:
            value = self.prefect_auth_string.get_secret_value()
        else:
            value = secret_file(self.state_dir / PREFECT_AUTH_FILE, generate_auth_string)
        # Whole, its password alone, and as the Basic token a request header would carry.
        register_secret(value)
        register_secret(value.partition(":")[2])
        register_secret(base64.b64encode(value.encode()).decode())
        return value

    @property
    def state_dir(self) -> Path:
        return self.home.resolve()

    @property
    def stack_id(self) -> str:
        """A short name of this stack (its state folder): sandboxes carry it, so a stack reaps
        only its own leftovers and never another stack's on the same machine."""
        return hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def webhook_url(self) -> str:
        return f"http://{self.host}:{self.webhook_port}/webhooks/github"

    @property
    def registry_address(self) -> str:
        return f"{self.host}:{self.registry_port}"

    @property
    def engine_socket(self) -> Path:
        return self.state_dir / "podman" / "podman.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.engine_socket}"


def prefect_env(settings: StackSettings) -> dict[str, str]:
    """Environment for every Prefect process Gantry starts: offline, fast polling, our server
    and its credential."""
    return {
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_API_AUTH_STRING": settings.api_auth_string(),
        "PREFECT_HOME": str(settings.state_dir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        # Flow runs prove they are alive this often (Prefect's minimum; its default is 180 s):
        # the zombie automation (deployments/zombies.py) crashes a run silent for 90 s.
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOCAL_STORAGE_PATH": str(settings.state_dir / "results"),
    }
