"""Who hears about a pipeline run while it happens: GitHub (statuses, deployments), metrics."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from flows.logs import step_logger
from flows.pipeline import RunContext, StageObserver
from flows.report import StatusReporter

_GITHUB_REMOTE = re.compile(
    r"github\.com[:/](?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(?:\.git)?/?$"
)


def github_repository(context: RunContext) -> str | None:
    """``owner/name`` on GitHub: given by the webhook, or read from a github.com clone URL."""
    if context.repository_name:
        return context.repository_name
    match = _GITHUB_REMOTE.search(context.repository)
    return f"{match['owner']}/{match['name']}" if match else None


@dataclass
class Observers:
    stages: list[StageObserver] = field(default_factory=list)
    github: StatusReporter | None = None

    async def deployment_started(self, environment: str, ref: str, production: bool) -> int | None:
        if self.github is None:
            return None
        return await self.github.deployment_started(
            environment, ref, description=f"gantry: {environment}", production=production
        )

    async def deployment_finished(self, deployment_id: int | None, ok: bool, url: str) -> None:
        if self.github is not None:
            await self.github.deployment_finished(
                deployment_id, "success" if ok else "failure", environment_url=url or None
            )


@contextlib.asynccontextmanager
async def pipeline_observers(context: RunContext) -> AsyncIterator[Observers]:
    observers = Observers()
    name = github_repository(context)
    if name is None:
        step_logger().info("GitHub reporting is off: the repository has no GitHub owner/name")
        yield observers
        return
    async with await StatusReporter.load(name, context.sha) as reporter:
        observers.github = reporter if reporter.enabled else None
        if reporter.enabled:
            observers.stages.append(reporter)
        yield observers
