"""After a production release: metrics, a Datadog deployment event, DORA, and one Prefect event
when it failed.

Paging is Datadog's: its ``release_failed`` monitor (infra/terraform/modules/monitoring) pages
P1 on the ``gantry.release.outcome`` metric sent here, so Gantry never pages by itself (one
failed release, one page). The ``gantry.release.failed`` event is for chat: the automation that
deployments/notifications.py applies turns it into one message.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from blocks.observability import load_datadog_settings
from clients.datadog_api import report_deployment
from clients.metrics import Metrics, load_metrics
from flows.records.store import ReleaseRecord, all_releases

logger = logging.getLogger("gantry.announce")

# The window of the DORA gauges sent at each release (`gantry dora` defaults to it too).
DORA_WINDOW = timedelta(days=30)

# Deployment outcomes that count towards DORA and the release monitor; a rejection or a
# timeout deployed nothing, so it is neither.
DEPLOYED = ("success", "failed", "rolled_back")

# The Prefect event of a release that touched production and did not end on the new version.
# The release flow ends Failed for other reasons too (a refused candidate, nothing deployed), so
# chat hears about a failed release from this event, never from the flow run's state.
RELEASE_FAILED_EVENT = "gantry.release.failed"
RELEASE_RESOURCE_PREFIX = "gantry.release."


async def announce_release(record: ReleaseRecord, run_url: str | None) -> None:
    """Tell Datadog (and, on failure, Prefect's event stream) how a release ended. Never raises."""
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
    if outcome != "success":
        emit_release_failed(record, run_url)


def emit_release_failed(record: ReleaseRecord, run_url: str | None) -> None:
    """One ``gantry.release.failed`` event naming the repository, commit and outcome. Never
    raises: the release is over, and telling chat about it must not change how it ended."""
    from prefect.events import emit_event

    try:
        emit_event(
            event=RELEASE_FAILED_EVENT,
            resource={
                "prefect.resource.id": f"{RELEASE_RESOURCE_PREFIX}{record.id}",
                "prefect.resource.name": record.repository_slug,
                "gantry.repository": record.repository_slug,
                "gantry.commit": record.commit_sha or "unknown",
                "gantry.outcome": record.outcome,
                "gantry.environment": record.environment,
            },
            payload={"run_url": run_url or "", "detail": record.detail or ""},
        )
    except Exception as exc:  # e.g. EventTooLarge: the release's own result stands
        logger.warning("release event not sent: %s: %s", type(exc).__name__, exc)


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
