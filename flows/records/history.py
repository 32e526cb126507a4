"""The run before this one: the newest earlier run of the same flow for the same PR or branch.

A summary links to it so a person can compare "what changed since last time" in one click.
Runs started from the CLI carry no tags, so runs are matched on their parameters, which every
run has. The lookup is a nicety: any failure is logged and the link is left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext
from pydantic import BaseModel

from core.identity import repository_slug
from core.links import flow_run_url
from flows.logs import step_logger
from flows.results import RunContext

# Runs of other PRs and branches come in between: look this far back, a page at a time.
PAGE_SIZE = 50
MAX_PAGES = 4
# The summary waits this long at most for the answer; the pipeline's outcome never does.
LOOKUP_TIMEOUT = 15.0


class PreviousRun(BaseModel):
    """An earlier run of the same pipeline for the same PR, branch or repository."""

    id: str
    name: str
    state: str
    url: str | None = None
    # What the two runs have in common, as a person reads it: "PR #12", "branch main".
    subject: str


def subject(context: RunContext) -> str | None:
    """What makes an earlier run "the same": None when this run has nothing to compare on."""
    if not (context.repository or context.repository_name):
        return None
    if context.pipeline == "pr":
        if context.pr_number is not None:
            return f"PR #{context.pr_number}"
        return f"branch {context.ref}" if context.ref else None
    if context.pipeline == "merge":
        return f"branch {context.ref}" if context.ref else None
    if context.pipeline == "release":
        return f"repository {context.repository_name or repository_slug(context.repository)}"
    return None


def _normalized(repository: str) -> str:
    # The same clone URL or folder may be written with or without ".git" or a trailing slash.
    return repository.strip().rstrip("/").removesuffix(".git").lower()


def same_repository(
    repository: str | None,
    repository_name: str | None,
    other: str | None,
    other_name: str | None,
) -> bool:
    """Whether two runs build the same repository, judged on what both of them name.

    ``owner/name`` decides when both runs have it; else the clone URL or path. A run known
    only by a name and one known only by a URL do not match: a missing link is better than
    a link to another repository's run.
    """
    if repository_name and other_name:
        return repository_name.casefold() == other_name.casefold()
    if repository and other:
        return _normalized(repository) == _normalized(other)
    return False


def _same_value(a: object, b: object) -> bool:
    # Parameters come back as JSON: a number may have been sent as a string by a script.
    return a is not None and b is not None and str(a) == str(b)


def matches(context: RunContext, parameters: Mapping[str, Any]) -> bool:
    """Whether an earlier run with ``parameters`` is of the same PR, branch or repository."""
    if not same_repository(
        context.repository,
        context.repository_name,
        parameters.get("repository"),
        parameters.get("repository_name"),
    ):
        return False
    if context.pipeline == "release":
        # Releases are per repository: whichever candidate or tag, the last one counts.
        return True
    if context.pipeline == "pr":
        if context.pr_number is not None:
            return _same_value(parameters.get("pr_number"), context.pr_number)
        return parameters.get("pr_number") is None and _same_value(
            parameters.get("head_ref"), context.ref
        )
    return _same_value(parameters.get("ref"), context.ref)


async def _search(context: RunContext, current: FlowRun) -> FlowRun | None:
    # Runs created after this one (a newer push to the same PR) are not "previous": only runs
    # expected to start no later than this one are read, newest first.
    before = current.expected_start_time or current.created
    run_filter = FlowRunFilter(
        id=FlowRunFilterId(not_any_=[current.id]),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=before) if before else None,
    )
    # The same flow, whichever deployment (or none) started it.
    flow_filter = FlowFilter(id=FlowFilterId(any_=[current.flow_id]))
    async with get_client() as client:
        for page in range(MAX_PAGES):
            runs = await client.read_flow_runs(
                flow_filter=flow_filter,
                flow_run_filter=run_filter,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=PAGE_SIZE,
                offset=page * PAGE_SIZE,
            )
            for run in runs:
                if matches(context, run.parameters):
                    return run
            if len(runs) < PAGE_SIZE:
                break
    return None


async def previous_run(
    context: RunContext, current: FlowRun | None = None, timeout: float = LOOKUP_TIMEOUT
) -> PreviousRun | None:
    """The newest earlier run of ``current``'s flow (this flow run by default) for the same
    PR, branch or repository as ``context``; None when there is none or it cannot be found.

    Never raises: a summary without the link is better than a pipeline failed by its summary.
    """
    if current is None:
        run_context = FlowRunContext.get()
        current = run_context.flow_run if run_context is not None else None
    about = subject(context)
    if current is None or about is None:
        return None
    try:
        async with asyncio.timeout(timeout):
            found = await _search(context, current)
    except Exception as exc:
        step_logger("summary").warning(
            "summary: could not look up the previous run of %s: %s",
            about,
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        )
        return None
    if found is None:
        return None
    return PreviousRun(
        id=str(found.id),
        name=found.name,
        state=(found.state.name if found.state else None) or "unknown",
        url=flow_run_url(flow_run_id=str(found.id)),
        subject=about,
    )
