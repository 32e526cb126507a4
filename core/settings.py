"""Settings of the local stack: one class, read from the environment (``GANTRY_*``).

Every part listens on loopback by default; each port is overridable so that tests and a
running demo never clash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Names of what `prefect.yaml` deploys; the CLI, the webhook dispatcher and tests share them.
WORK_POOL = "gantry-local"
PR_DEPLOYMENT = "pr-pipeline/pr"
MERGE_DEPLOYMENT = "merge-pipeline/merge"
RELEASE_DEPLOYMENT = "release-pipeline/release"


class StackSettings(BaseSettings):
    """Where the local stack keeps its state and which loopback ports it uses."""

    model_config = SettingsConfigDict(env_prefix="GANTRY_", extra="ignore")

    home: Path = Field(default=Path(".gantry"), description="state folder")
    host: str = "127.0.0.1"
    prefect_port: int = Field(default=4200, ge=1, le=65535)
    webhook_port: int = Field(default=8787, ge=1, le=65535)
    registry_port: int = Field(default=5000, ge=1, le=65535)
    # Local deploy targets: each environment's service answers on its own loopback port.
    staging_port: int = Field(default=8801, ge=1, le=65535)
    production_port: int = Field(default=8802, ge=1, le=65535)
    work_pool: str = WORK_POOL

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
    """Environment for every Prefect process Gantry starts: offline, fast polling, our server."""
    return {
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_HOME": str(settings.state_dir / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOCAL_STORAGE_PATH": str(settings.state_dir / "results"),
    }
