"""Pipeline progress on GitHub: a check run or a commit status per stage, and deployments.

With GitHub App credentials each stage is a check run (``flows.records.check_runs``: annotations,
a Markdown report, a re-run button); with a token, which GitHub does not let write check runs, a
commit status. Both are named ``gantry/<stage>``, so required checks keep their names when an
install moves from one to the other. ``StatusReporter`` is the one entry point: it picks the mode
from the credentials. Deployments and their statuses are the same in both modes.

A skipped stage is never reported as passed: a ``success`` status would satisfy a required check
as if the stage had run, so it stays ``pending`` and says it did not run.

Reporting never breaks a pipeline: each report is bounded in time, its failures are logged and
dropped. Without credentials, reporting is off and says so once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from blocks.github import DEFAULT_BLOCK_NAME, GitHubCredentials, load_github_credentials
from clients.github import GitHubClient, RetryPolicy
from clients.github_errors import GitHubError
from clients.github_models import CommitState
from core.links import flow_run_url
from flows.records.check_runs import StageCheckRuns, external_id_for, first_line, skip_reason
from flows.results import StageResult, StageStatus

logger = logging.getLogger("gantry.report")

T = TypeVar("T")
FinalDeploymentState = Literal["success", "failure", "error", "inactive"]

# A report may wait for GitHub this long at most (retries and rate limits included), so a slow
# or limited GitHub delays a stage by a bounded amount and never fails it.
REPORT_POLICY = RetryPolicy(attempts=4, backoff=1.0, backoff_cap=8.0, max_wait=60.0)
REPORT_TIMEOUT = 90.0
# Stage details can quote tool output: only the first line goes to GitHub, shortened, redacted
# (registered secrets and credential shapes, core.redact) and without control characters
# (check_runs.first_line).
# The context of a crash that happened while no stage was in flight.
CRASH_CONTEXT = "run"


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return str(context.flow_run.id)


def describe(result: StageResult) -> tuple[CommitState, str]:
    """The GitHub commit state and short description for a finished stage."""
    status = result.status
    if status == StageStatus.PASSED:
        return "success", f"passed in {result.seconds:.1f}s"
    if status == StageStatus.CACHED:
        return "success", "passed (cached result of an unchanged commit)"
    if status == StageStatus.SKIPPED:
        # Not success: that would satisfy a required check as if the stage had run.
        return "pending", f"skipped: {skip_reason(result)} (not run)"
    if status == StageStatus.CANCELLED:
        return "error", "cancelled"
    if result.exit_code is not None:
        reason = f"exit code {result.exit_code}"
    else:
        reason = first_line(result.detail) or "failed"
    return "failure", f"failed after {result.seconds:.1f}s: {reason}"


class StatusReporter:
    """Reports one pipeline run (repository, commit) to GitHub; a no-op without a client.

    ``check_runs`` (set from App credentials by ``from_credentials``) reports stages as check
    runs instead of commit statuses; ``pipeline`` and ``pr_number`` name the run in their
    ``external_id``.
    """

    def __init__(
        self,
        repository: str,
        sha: str,
        client: GitHubClient | None,
        *,
        ui_url: str | None = None,
        flow_run_id: str | None = None,
        context_prefix: str = "gantry",
        timeout: float = REPORT_TIMEOUT,
        check_runs: bool = False,
        pipeline: str | None = None,
        pr_number: int | None = None,
    ) -> None:
        self.repository = repository
        self.sha = sha
        self.context_prefix = context_prefix
        self.timeout = timeout
        self.pipeline = pipeline
        # A run's parameters come back from Prefect as JSON: anything but a number is no PR.
        valid_pr = isinstance(pr_number, int) and not isinstance(pr_number, bool)
        self.pr_number = pr_number if valid_pr else None
        self._client = client
        self._ui_url = ui_url
        self._flow_run_id = flow_run_id
        self._checks: StageCheckRuns | None = None
        if client is None:
            _run_logger().info("GitHub reporting is off: no credentials")
        elif check_runs:
            self._checks = StageCheckRuns(client, repository, sha, ui_url=ui_url)

    @classmethod
    def from_credentials(
        cls,
        repository: str,
        sha: str,
        credentials: GitHubCredentials | None,
        *,
        policy: RetryPolicy = REPORT_POLICY,
        **kwargs: Any,
    ) -> StatusReporter:
        if credentials is None:
            return cls(repository, sha, None, **kwargs)
        client = GitHubClient.from_credentials(credentials, policy=policy)
        kwargs.setdefault("ui_url", credentials.ui_url)
        # Only a GitHub App may write check runs; a token reports commit statuses.
        kwargs.setdefault("check_runs", credentials.uses_app)
        return cls(repository, sha, client, **kwargs)

    @classmethod
    async def load(
        cls,
        repository: str,
        sha: str,
        *,
        block_name: str | None = DEFAULT_BLOCK_NAME,
        **kwargs: Any,
    ) -> StatusReporter:
        """From the saved GitHub block, else the GANTRY_GITHUB_* environment, else off."""
        try:
            credentials = await load_github_credentials(block_name)
        except ValueError as exc:
            _run_logger().warning("GitHub credentials are invalid: %s", exc)
            credentials = None
        return cls.from_credentials(repository, sha, credentials, **kwargs)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @property
    def uses_check_runs(self) -> bool:
        return self._checks is not None

    @property
    def target_url(self) -> str | None:
        return flow_run_url(self._flow_run_id or _flow_run_id(), self._ui_url)

    @property
    def external_id(self) -> str | None:
        """``<pipeline>:<pr>:<flow run id>`` for this run's check runs, when it is known."""
        return external_id_for(self.pipeline, self.pr_number, self._flow_run_id or _flow_run_id())

    def context(self, stage: str) -> str:
        return f"{self.context_prefix}/{stage}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # --- check runs or commit statuses (the pipeline's StageObserver) ---------------------------

    async def stage_started(self, stage: str) -> None:
        if self._checks is None:
            await self._status(stage, "pending", "running")
            return
        name = self.context(stage)
        await self._guarded(
            f"check run {name} in_progress",
            self._checks.started(name, external_id=self.external_id, details_url=self.target_url),
        )

    async def stage_finished(self, stage: str, result: StageResult) -> None:
        if self._checks is None:
            state, description = describe(result)
            await self._status(stage, state, description)
            return
        name = self.context(stage)
        await self._guarded(
            f"check run {name} {result.status.value}",
            self._checks.finished(
                name, result, external_id=self.external_id, details_url=self.target_url
            ),
        )

    async def _status(self, stage: str, state: CommitState, description: str) -> None:
        client = self._client
        if client is None:
            return
        context = self.context(stage)
        await self._guarded(
            f"commit status {context}={state}",
            client.create_commit_status(
                self.repository, self.sha, state, context, description, self.target_url
            ),
        )

    # --- infrastructure crashes (deployments/crashes.py) --------------------------------------

    def run_url(self, flow_run_id: str) -> str | None:
        """The UI page of another run of this commit (a crashed attempt or its retry)."""
        return flow_run_url(flow_run_id, self._ui_url)

    async def infrastructure_error(
        self, stages: Sequence[str], description: str, *, crashed_run_id: str | None = None
    ) -> None:
        """``error``, not ``failure``: the run's infrastructure crashed, not the code.

        Set on each stage the crashed run left pending, so that a retry's own statuses replace
        them; ``run`` when no stage was in flight. With check runs (GitHub has no ``error``
        conclusion) the crashed run's in-progress check runs, found by their ``external_id``
        ending in ``crashed_run_id``, complete as ``failure`` titled "infrastructure crashed".
        """
        if self._checks is None:
            for stage in stages or (CRASH_CONTEXT,):
                await self._status(stage, "error", description)
            return
        crashed = crashed_run_id or self._flow_run_id or _flow_run_id()
        if not crashed:
            _run_logger().warning("cannot report a crash as check runs: the run is unknown")
            return
        await self._guarded(
            "infrastructure crash as check runs",
            self._checks.crashed(
                [self.context(stage) for stage in stages],
                description,
                fallback_name=self.context(CRASH_CONTEXT),
                crashed_run_id=crashed,
                pipeline=self.pipeline,
                pr_number=self.pr_number,
                details_url=self.target_url,
            ),
        )

    # --- deployments --------------------------------------------------------------------------

    async def deployment_started(
        self,
        environment: str,
        ref: str,
        *,
        description: str | None = None,
        payload: dict[str, Any] | None = None,
        production: bool = False,
        transient: bool = False,
    ) -> int | None:
        """Create a GitHub deployment marked in progress; its id, or None if not reported."""
        client = self._client
        if client is None:
            return None
        deployment = await self._guarded(
            f"deployment to {environment}",
            client.create_deployment(
                self.repository,
                ref,
                environment,
                payload=payload,
                description=description,
                production_environment=production,
                transient_environment=transient,
            ),
        )
        if deployment is None:
            return None
        await self._guarded(
            f"deployment {deployment.id} in_progress",
            client.create_deployment_status(
                self.repository,
                deployment.id,
                "in_progress",
                log_url=self.target_url,
                description=f"deploying to {environment}",
            ),
        )
        return deployment.id

    async def deployment_finished(
        self,
        deployment_id: int | None,
        state: FinalDeploymentState,
        environment_url: str | None = None,
        description: str | None = None,
    ) -> None:
        client = self._client
        if client is None or deployment_id is None:
            return
        await self._guarded(
            f"deployment {deployment_id} {state}",
            client.create_deployment_status(
                self.repository,
                deployment_id,
                state,
                environment_url=environment_url,
                log_url=self.target_url,
                description=first_line(description) if description else None,
            ),
        )

    async def _guarded(self, what: str, call: Awaitable[T]) -> T | None:
        """Await one report within the time bound; log and swallow any failure."""
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except TimeoutError:
            _run_logger().warning(
                "could not report %s to GitHub: no answer within %.0fs", what, self.timeout
            )
        except (GitHubError, ValueError) as exc:
            _run_logger().warning("could not report %s to GitHub: %s", what, exc)
        return None
