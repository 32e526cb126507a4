"""Who hears about a pipeline run while it happens: GitHub (check runs or commit statuses, as
the credentials allow, and deployments), metrics."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect.client.schemas.objects import FlowRun, State
from prefect.flows import Flow, FlowStateHook

from clients.metrics import Metrics, load_metrics
from core.identity import repository_slug
from flows.logs import step_logger
from flows.pipelines.stages import StageObserver
from flows.records.github_report import StatusReporter
from flows.results import RunContext, StageResult

_GITHUB_REMOTE = re.compile(
    r"github\.com[:/](?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(?:\.git)?/?$"
)


def github_repository(context: RunContext) -> str | None:
    """``owner/name`` on GitHub: given by the webhook, or read from a github.com clone URL."""
    if context.repository_name:
        return context.repository_name
    match = _GITHUB_REMOTE.search(context.repository)
    return f"{match['owner']}/{match['name']}" if match else None


logger = logging.getLogger("gantry.observers")
_queue_timed: set[uuid.UUID] = set()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def queued_since(flow_run: FlowRun) -> datetime | None:
    """When the run was asked for: the webhook's arrival (``received_at``), else its creation."""
    received = flow_run.parameters.get("received_at")
    if isinstance(received, datetime):
        return _aware(received)
    if isinstance(received, str) and received:
        try:
            return _aware(datetime.fromisoformat(received))
        except ValueError:
            logger.warning("received_at %r is not an ISO time; queue time from creation", received)
    return _aware(flow_run.created) if flow_run.created else None


def queue_time_hook(pipeline: str) -> FlowStateHook[..., Any]:
    """An ``on_running`` hook: seconds from the trigger to the flow running, as a metric.

    Once per run and process: a release resumed after its approval gate runs again, but its
    wait for a person is not queue time.
    """

    async def record_queue_time(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
        del flow
        if flow_run.id in _queue_timed:
            return
        _queue_timed.add(flow_run.id)
        since = queued_since(flow_run)
        if since is None:
            return
        running = _aware(state.timestamp) if state.timestamp else datetime.now(UTC)
        seconds = max(0.0, (running - since).total_seconds())
        params = flow_run.parameters
        repository = params.get("repository_name") or repository_slug(
            str(params.get("repository") or "")
        )
        (await load_metrics()).queue_time(pipeline, seconds, str(repository))
        logger.info("queue time %.2f s (trigger to running)", seconds)

    return record_queue_time


class MetricsObserver:
    """Stage outcomes and durations as DogStatsD metrics (a no-op when not configured)."""

    def __init__(self, metrics: Metrics, pipeline: str, repository: str) -> None:
        self.metrics, self.pipeline, self.repository = metrics, pipeline, repository

    async def stage_started(self, stage: str) -> None:
        del stage

    async def stage_finished(self, stage: str, result: StageResult) -> None:
        self.metrics.stage_finished(
            self.pipeline, stage, result.status.value, result.seconds, self.repository
        )


@dataclass
class Observers:
    stages: list[StageObserver] = field(default_factory=list)
    github: StatusReporter | None = None
    metrics: Metrics | None = None
    repository: str = ""

    async def deployment_started(self, environment: str, ref: str, production: bool) -> int | None:
        if self.github is None:
            return None
        return await self.github.deployment_started(
            environment, ref, description=f"gantry: {environment}", production=production
        )

    async def deployment_finished(
        self, deployment_id: int | None, ok: bool, url: str, environment: str = "staging"
    ) -> None:
        if self.metrics is not None:
            outcome = "success" if ok else "failed"
            self.metrics.deployment(environment, outcome, self.repository)
        if self.github is not None:
            await self.github.deployment_finished(
                deployment_id, "success" if ok else "failure", environment_url=url or None
            )


@contextlib.asynccontextmanager
async def pipeline_observers(context: RunContext) -> AsyncIterator[Observers]:
    metrics = await load_metrics()
    repository = context.repository_name or repository_slug(context.repository)
    observers = Observers(metrics=metrics, repository=repository)
    observers.stages.append(MetricsObserver(metrics, context.pipeline, repository))
    name = github_repository(context)
    if name is None:
        step_logger().info("GitHub reporting is off: the repository has no GitHub owner/name")
        yield observers
        return
    # The reporter picks check runs (GitHub App) or commit statuses (token) itself; the pipeline
    # and pull request name the run in a check run's external_id.
    reporter = await StatusReporter.load(
        name, context.sha, pipeline=context.pipeline, pr_number=context.pr_number
    )
    async with reporter:
        observers.github = reporter if reporter.enabled else None
        if reporter.enabled:
            observers.stages.append(reporter)
        yield observers
