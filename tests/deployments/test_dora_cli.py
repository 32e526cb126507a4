"""`gantry dora` reads the release records kept in Prefect and answers with known numbers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from deployments.stack import Stack
from flows.records.store import ReleaseRecord, record_release
from tests.plugins.stack import GANTRY, stack_environment


@pytest.mark.slow
def test_dora_json_answers_from_the_recorded_releases(local_stack: Stack) -> None:
    slug = f"acme-dora-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)

    def record(hours_ago: float, outcome: str, lead_hours: float) -> ReleaseRecord:
        finished = now - timedelta(hours=hours_ago)
        return ReleaseRecord(
            id=f"rel-{uuid.uuid4().hex[:8]}",
            repository_slug=slug,
            candidate_id="rc-x",
            commit_sha="a" * 40,
            images={"web": "r/web@sha256:" + "1" * 64},
            outcome=outcome,  # type: ignore[arg-type]
            started_at=finished - timedelta(minutes=5),
            finished_at=finished,
            commit_time=finished - timedelta(hours=lead_hours),
        )

    history = [
        record(72, "success", 2),
        record(48, "rolled_back", 1),
        record(46, "success", 4),  # restores the failure two hours later
        record(24, "success", 6),
    ]

    async def write() -> None:
        for item in history:
            await record_release(item)

    asyncio.run(write())
    result = subprocess.run(
        [GANTRY, "dora", "--repo", slug, "--since", "30d", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **stack_environment(local_stack.settings)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    text = json.dumps(report)
    assert slug in text
    # 3 successful releases of 4; one of 4 failed; restored after 2 h; lead times 2, 4, 6 h.
    assert report["deployments"] == 3
    assert report["change_failure_rate"] == pytest.approx(0.25)
    assert report["time_to_restore_median_seconds"] == pytest.approx(2 * 3600, rel=0.01)
    assert report["lead_time_median_seconds"] == pytest.approx(4 * 3600, rel=0.01)
