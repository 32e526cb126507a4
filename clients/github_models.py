"""The parts of GitHub's answers Gantry reads; unknown fields ignored, optional ones tolerated."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

CommitState = Literal["error", "failure", "pending", "success"]
DeploymentState = Literal[
    "error", "failure", "inactive", "in_progress", "queued", "pending", "success"
]
CheckRunStatus = Literal["queued", "in_progress", "completed"]
CheckConclusion = Literal[
    "success", "failure", "neutral", "cancelled", "skipped", "timed_out", "action_required"
]
AnnotationLevel = Literal["notice", "warning", "failure"]


class _GitHubModel(BaseModel):
    # hide_input_in_errors: a rejected token answer must not be echoed into a traceback.
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)


class CheckAnnotation(BaseModel):
    """One line of code a check run points at (``output.annotations[]`` of the Checks API).

    Made by Gantry from a tool's machine-readable report, so it is strict on the way in:
    ``path`` is relative to the repository root, lines start at 1, and columns are kept only
    on a one-line annotation (GitHub refuses them otherwise).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=1024)
    start_line: int = Field(ge=1)
    end_line: int = Field(ge=1)
    annotation_level: AnnotationLevel = "failure"
    message: str = Field(min_length=1, max_length=65_535)
    title: str | None = Field(default=None, max_length=255)
    raw_details: str | None = Field(default=None, max_length=65_535)
    start_column: int | None = Field(default=None, ge=1)
    end_column: int | None = Field(default=None, ge=1)

    def payload(self) -> dict[str, Any]:
        """The JSON GitHub takes: unset fields left out, columns only on one line."""
        data = self.model_dump(exclude_none=True)
        if self.start_line != self.end_line:
            data.pop("start_column", None)
            data.pop("end_column", None)
        return data


class CheckRun(_GitHubModel):
    """``POST``/``PATCH /repos/{owner}/{repo}/check-runs``: the fields Gantry reads back."""

    id: int
    name: str
    head_sha: str
    status: CheckRunStatus
    conclusion: CheckConclusion | None = None
    external_id: str | None = None
    details_url: str | None = None
    html_url: str | None = None


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


class CheckRunList(_GitHubModel):
    """``GET /repos/{owner}/{repo}/commits/{ref}/check-runs``: one page of the commit's runs."""

    total_count: int
    check_runs: list[CheckRun]


class CheckOutput(BaseModel):
    """``output`` of a check run as Gantry sends it: a one-line title, a Markdown summary,
    optional details and the annotations. Lengths are cut to GitHub's limits by the client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    text: str | None = None
    annotations: tuple[CheckAnnotation, ...] = ()
