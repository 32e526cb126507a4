"""After a production release: metrics, a Datadog deployment event, and paging on failure."""

from __future__ import annotations

import logging
from datetime import timedelta

from blocks.observability import load_datadog_settings, load_pagerduty_settings
from clients.datadog_api import report_deployment
from clients.metrics import Metrics, load_metrics
from clients.pagerduty import dedup_key, page, resolve_page
from flows.records.store import ReleaseRecord, all_releases

logger = logging.getLogger("gantry.announce")

# The window of the DORA gauges sent at each release (`gantry dora` defaults to it too).
DORA_WINDOW = timedelta(days=30)

# Deployment outcomes that count towards DORA and the release monitor; a rejection or a
# timeout deployed nothing, so it is neither.
DEPLOYED = ("success", "failed", "rolled_back")


async def announce_release(record: ReleaseRecord, run_url: str | None) -> None:
    """Tell Datadog and PagerDuty how a release ended. Never raises."""
    if record.outcome not in DEPLOYED:
        return
    outcome = record.outcome
    metrics = await load_metrics()
    metrics.release_outcome(outcome, record.repository_slug)  # type: ignore[arg-type]
    if outcome == "rolled_back":
        metrics.rollback(record.environment, record.repository_slug)
    await emit_dora(metrics, record.repository_slug)
    await report_deployment(
        await load_datadog_settings(),
        service=record.repository_slug,
        repository=record.repository_slug,
        environment=record.environment,
        outcome=outcome,  # type: ignore[arg-type]
        started_at=record.started_at,
        finished_at=record.finished_at,
        commit_sha=record.commit_sha,
        deployment_id=record.id,
        run_url=run_url,
    )
    pagerduty = await load_pagerduty_settings()
    key = dedup_key("release", record.repository_slug, record.environment)
    if outcome == "success":
        await resolve_page(pagerduty, key)
        return
    # P1: production was touched and did not end on the new version.
    await page(
        pagerduty,
        f"{record.repository_slug}: production release {outcome.replace('_', ' ')}",
        source="gantry",
        dedup_key=key,
        severity="P1",
        custom_details={"release": record.id, "detail": record.detail, "commit": record.commit_sha},
        links=[{"href": run_url, "text": "release run"}] if run_url else (),
    )


async def emit_dora(metrics: Metrics, repository: str) -> None:
    """The repository's DORA metrics over the last 30 days, as gauges. Never raises."""
    from flows.records.dora import compute_dora, deployment_records, emit

    if not metrics.enabled:
        return
    try:
        records = deployment_records(await all_releases())
        emit(metrics, compute_dora(records, DORA_WINDOW, repository=repository))
    except Exception as exc:  # the release is done; its metrics must not undo that
        logger.warning("DORA metrics not sent: %s: %s", type(exc).__name__, exc)
