"""The parts of GitHub's answers Gantry reads; unknown fields ignored, optional ones tolerated."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

CommitState = Literal["error", "failure", "pending", "success"]
DeploymentState = Literal[
    "error", "failure", "inactive", "in_progress", "queued", "pending", "success"
]


class _GitHubModel(BaseModel):
    # hide_input_in_errors: a rejected token answer must not be echoed into a traceback.
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)


class CommitStatus(_GitHubModel):
    id: int
    state: CommitState
    context: str = "default"
    description: str | None = None
    target_url: str | None = None
    created_at: datetime | None = None


class Deployment(_GitHubModel):
    id: int
    ref: str
    sha: str | None = None
    task: str = "deploy"
    environment: str = "production"
    description: str | None = None
    payload: dict[str, Any] | str | None = None
    transient_environment: bool | None = None
    production_environment: bool | None = None
    created_at: datetime | None = None


class DeploymentStatus(_GitHubModel):
    id: int
    state: DeploymentState
    description: str | None = None
    environment: str | None = None
    environment_url: str | None = None
    log_url: str | None = None
    created_at: datetime | None = None


class HookDelivery(_GitHubModel):
    """One attempt to deliver a webhook; a redelivery keeps the original's ``guid``."""

    id: int
    guid: str
    delivered_at: datetime
    redelivery: bool = False
    duration: float | None = None
    status: str | None = None
    status_code: int | None = None
    event: str | None = None
    action: str | None = None
    installation_id: int | None = None
    repository_id: int | None = None


class InstallationToken(_GitHubModel):
    token: SecretStr
    expires_at: datetime
