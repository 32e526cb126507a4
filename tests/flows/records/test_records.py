"""Release records kept as Prefect artifacts, read back for `gantry dora` among other artifacts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from deployments.prefect_server import PrefectServer
from flows.records.store import ReleaseRecord, all_releases, record_release


def release(slug: str, outcome: str, hours_ago: float) -> ReleaseRecord:
    finished = datetime.now(UTC) - timedelta(hours=hours_ago)
    return ReleaseRecord.model_validate(
        {
            "id": str(uuid.uuid4()),
            "repository_slug": slug,
            "candidate_id": str(uuid.uuid4()),
            "commit_sha": "a" * 40,
            "images": {"api": "registry/api@sha256:" + "b" * 64},
            "outcome": outcome,
            "started_at": finished - timedelta(minutes=3),
            "finished_at": finished,
        }
    )


@flow(name="records-probe")
def pipeline_artifacts_like_a_release_run() -> None:
    # What every release pipeline run publishes next to the records: its summary and report.
    create_table_artifact(key="release-summary", table=[{"stage": "deploy", "status": "passed"}])
    create_markdown_artifact(key="release-report", markdown="## release pipeline")


def test_all_releases_reads_every_repositorys_records_and_nothing_else(
    prefect_server: PrefectServer,
) -> None:
    del prefect_server
    slug_a, slug_b = f"records-a-{uuid.uuid4().hex[:8]}", f"candidate-{uuid.uuid4().hex[:8]}"
    written = [release(slug_a, "success", 5), release(slug_a, "failed", 3)]
    written.append(release(slug_b, "rolled_back", 1))
    for record in written:
        asyncio.run(record_release(record))
    pipeline_artifacts_like_a_release_run()

    found = [r for r in asyncio.run(all_releases()) if r.repository_slug in (slug_a, slug_b)]
    # Newest first, from both repositories (a slug starting "candidate-" is no candidate).
    assert [r.id for r in found] == [r.id for r in reversed(written)]
