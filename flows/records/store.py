"""Durable records kept in Prefect as artifacts: release candidates and releases.

An artifact key holds a history (every version stays readable), survives restarts with the
Prefect server's database, and shows in the UI's Artifacts page, so the same record serves the
release flow, `gantry dora` and a person looking for what was verified.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.artifacts import acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactFilter,
    ArtifactFilterKey,
)
from prefect.client.schemas.sorting import ArtifactSort
from pydantic import BaseModel, Field

from core.identity import RepositoryIdentity

HISTORY_LIMIT = 200


def _now() -> datetime:
    return datetime.now(UTC)


class ReleaseCandidate(BaseModel):
    """A build whose staging E2E passed: the only thing a release may deploy."""

    id: str
    # Where the merge run fetched the code from: the URL built from the identity, or the
    # operator's own path or URL for a CLI run.
    repository: str
    repository_slug: str
    repository_name: str | None = None
    # Which repository: its exact full name and GitHub's id (None for a CLI run by path).
    repository_full_name: str | None = None
    repository_id: int | None = None
    commit_sha: str
    images: dict[str, str]
    flow_run_id: str
    scan_summary: dict[str, Any] = Field(default_factory=dict)
    e2e: str = "passed"
    staging_url: str | None = None
    commit_time: datetime | None = None
    # The commit's author email: the release gate refuses their own approval unless allowed.
    commit_author: str | None = None
    created_at: datetime = Field(default_factory=_now)
    # Filled in when read back: the flow run the Prefect server says wrote this record.
    recorded_by_run: str | None = None

    def digests(self) -> set[str]:
        return {ref.rpartition("@")[2] for ref in self.images.values()}

    @property
    def identity(self) -> RepositoryIdentity | None:
        """None for a record written before candidates carried their identity."""
        if not self.repository_full_name:
            return None
        return RepositoryIdentity(full_name=self.repository_full_name, id=self.repository_id)


Outcome = Literal["success", "failed", "rolled_back", "rejected", "timed_out"]


class ReleaseRecord(BaseModel):
    """One release attempt to production: who, what, and how it ended."""

    id: str
    repository_slug: str
    candidate_id: str
    commit_sha: str
    images: dict[str, str]
    previous_images: dict[str, str] = Field(default_factory=dict)
    environment: str = "production"
    triggered_by: str | None = None
    approved_by: str | None = None
    decision_comment: str | None = None
    outcome: Outcome
    detail: str = ""
    flow_run_id: str | None = None
    started_at: datetime
    finished_at: datetime = Field(default_factory=_now)
    commit_time: datetime | None = None


def candidate_key(slug: str) -> str:
    return f"release-candidate-{slug}"


RELEASE_PREFIX = "release-record-"


def release_key(slug: str) -> str:
    # Its own prefix: "release-<slug>" would share a namespace with the release pipeline's
    # "release-summary" / "release-report" and with "release-candidate-<slug>".
    return f"{RELEASE_PREFIX}{slug}"


async def _append(key: str, record: BaseModel, columns: dict[str, Any], what: str) -> None:
    row = {**columns, "record": record.model_dump_json()}
    await acreate_table_artifact(table=[row], key=key, description=what)


async def _history(key: str, limit: int) -> list[dict[str, Any]]:
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=limit,
        )
    records = []
    for artifact in artifacts:
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "record" in rows[0]:
            record = json.loads(rows[0]["record"])
            record["recorded_by_run"] = str(artifact.flow_run_id) if artifact.flow_run_id else None
            records.append(record)
    return records


async def record_candidate(candidate: ReleaseCandidate) -> None:
    columns = {
        "candidate": candidate.id,
        "commit": candidate.commit_sha,
        "images": ", ".join(f"{k}={v}" for k, v in sorted(candidate.images.items())),
        "e2e": candidate.e2e,
    }
    slug = candidate.repository_slug
    await _append(candidate_key(slug), candidate, columns, f"release candidate of {slug}")


async def list_candidates(slug: str, limit: int = HISTORY_LIMIT) -> list[ReleaseCandidate]:
    """Newest first."""
    return [ReleaseCandidate.model_validate(r) for r in await _history(candidate_key(slug), limit)]


async def find_candidate(
    identity: RepositoryIdentity,
    candidate_id: str | None = None,
    commit_sha: str | None = None,
) -> ReleaseCandidate | None:
    """The newest candidate of ``identity`` (with ``candidate_id``, of ``commit_sha``, if given).

    The key is only where to look: each record's own identity must be admitted by
    ``identity`` (same full name; the same GitHub id when the lookup has one), so a record of
    another repository, or one without an identity, is never returned.
    """
    for candidate in await list_candidates(identity.slug):
        recorded = candidate.identity
        if recorded is None or not identity.admits(recorded):
            continue
        if candidate_id is not None and candidate.id != candidate_id:
            continue
        if commit_sha is not None and candidate.commit_sha != commit_sha:
            continue
        return candidate
    return None


async def record_release(record: ReleaseRecord) -> None:
    columns = {
        "release": record.id,
        "outcome": record.outcome,
        "commit": record.commit_sha,
        "approved_by": record.approved_by or "",
        "images": ", ".join(f"{k}={v}" for k, v in sorted(record.images.items())),
    }
    slug = record.repository_slug
    await _append(release_key(slug), record, columns, f"production release of {slug}")


async def list_releases(slug: str, limit: int = HISTORY_LIMIT) -> list[ReleaseRecord]:
    """Newest first."""
    return [ReleaseRecord.model_validate(r) for r in await _history(release_key(slug), limit)]


async def all_releases(limit: int = HISTORY_LIMIT) -> list[ReleaseRecord]:
    """Release records of every repository, newest first."""
    async with get_client() as client:
        # One collection per key (its latest version): every repository, however many runs.
        collections = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(
                key=ArtifactCollectionFilterKey(like_=f"{RELEASE_PREFIX}%")
            ),
        )
    keys = {c.key for c in collections if c.key.startswith(RELEASE_PREFIX)}
    records: list[ReleaseRecord] = []
    for key in sorted(keys):
        records += [ReleaseRecord.model_validate(r) for r in await _history(key, limit)]
    return sorted(records, key=lambda r: r.finished_at, reverse=True)
