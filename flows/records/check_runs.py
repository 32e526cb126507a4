"""Pipeline stages as GitHub check runs, for installs that authenticate as a GitHub App.

Why check runs: only they carry annotations (a tool's findings at their file and line) and a
Markdown report, and GitHub gives each one a re-run button. Why one per stage, named like the
commit status context (``gantry/lint``): a failed stage is re-run on its own, annotations belong
to the stage whose tool produced them, and branch protection keeps the same required-check names
when an install moves from a token to an App. Tokens cannot write check runs (GitHub answers
403), so token-only installs keep commit statuses (``flows.records.github_report``).

Every method here may raise ``GitHubError`` or ``ValueError``; the reporter that owns this
object bounds each call in time and logs and drops its failures, so a pipeline never fails
because of GitHub.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from clients.github import GitHubClient, truncate
from clients.github_checks import check_external_id
from clients.github_models import CheckAnnotation, CheckConclusion, CheckOutput, CheckRun
from core.links import flow_run_url
from flows.records.markdown import clean, escape_inline, fenced, one_line
from flows.results import StageResult, StageStatus

logger = logging.getLogger("gantry.report")

# At most this many annotations per check run: GitHub shows them all on the pull request's
# files, and a tool that reports tens of thousands of findings would take hundreds of requests.
# The summary says when some were left out.
ANNOTATION_CAP = 1_000
# The end of a stage's output kept in its summary: the tail of the log is where a failure
# shows, and GitHub cuts the summary at 65,535 characters.
_TAIL_LIMIT = 50_000
_DETAIL_LIMIT = 100


def first_line(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """The first non-blank line of tool output, redacted, without control characters, short."""
    # Cleaned whole first: a PEM key or a secret spanning lines is masked before the cut.
    line = next((part.strip() for part in clean(text).splitlines() if part.strip()), "")
    return truncate(one_line(line, len(line)), limit)


def skip_reason(result: StageResult) -> str:
    return first_line(result.detail) or "not configured"


_CONCLUSIONS: dict[StageStatus, CheckConclusion] = {
    StageStatus.PASSED: "success",
    StageStatus.CACHED: "success",
    StageStatus.FAILED: "failure",
    StageStatus.CANCELLED: "cancelled",
    StageStatus.SKIPPED: "skipped",
}
# The fields of an annotation that quote code or tool output.
_FREE_TEXT = ("message", "title", "raw_details")


def conclusion_of(result: StageResult) -> CheckConclusion:
    """A skipped stage concludes ``skipped``, never ``success``: it did not run."""
    return _CONCLUSIONS[result.status]


def stage_title(result: StageResult) -> str:
    """One line: what happened to the stage."""
    status = result.status
    if status == StageStatus.PASSED:
        return f"passed in {result.seconds:.1f}s"
    if status == StageStatus.CACHED:
        return "passed (cached result of an unchanged commit)"
    if status == StageStatus.SKIPPED:
        return f"skipped: {skip_reason(result)} (not run)"
    if status == StageStatus.CANCELLED:
        return "cancelled"
    if result.exit_code is not None:
        reason = f"exit code {result.exit_code}"
    else:
        reason = first_line(result.detail) or "failed"
    return f"failed after {result.seconds:.1f}s: {reason}"


def stage_annotations(
    result: StageResult, cap: int = ANNOTATION_CAP
) -> tuple[list[CheckAnnotation], int, int]:
    """The stage's annotations (``data["annotations"]``, ``CheckAnnotation.payload()`` dicts),
    redacted, at most ``cap``; with how many there were in all and how many were malformed."""
    raw = result.data.get("annotations") or []
    if not isinstance(raw, list):
        return [], 0, 1
    kept: list[CheckAnnotation] = []
    malformed = 0
    for item in raw:
        annotation = _annotation(item)
        if annotation is None:
            malformed += 1
        elif len(kept) < cap:
            kept.append(annotation)
    return kept, len(raw) - malformed, malformed


def _annotation(item: Any) -> CheckAnnotation | None:
    # Messages quote code and tool output: secrets are masked as in every other report.
    if not isinstance(item, dict):
        return None
    texts = {k: clean(v) for k, v in item.items() if k in _FREE_TEXT and isinstance(v, str)}
    try:
        return CheckAnnotation.model_validate({**item, **texts})
    except ValidationError:
        return None


def stage_output(
    result: StageResult, *, ui_url: str | None = None, cap: int = ANNOTATION_CAP
) -> CheckOutput:
    """The check run's title, Markdown summary (outcome, duration, cached-from run, the
    redacted tail of the output) and annotations."""
    annotations, total, malformed = stage_annotations(result, cap)
    lines = [f"**{result.status.value}**: {escape_inline(stage_title(result), 300)}", ""]
    if result.status == StageStatus.SKIPPED:
        lines += ["This stage did not run, so it passed nothing.", ""]
    if result.status != StageStatus.SKIPPED:
        lines += [f"Duration: {result.seconds:.1f} s", ""]
    if result.cached_from:
        url = flow_run_url(result.cached_from, ui_url)
        run = escape_inline(result.cached_from, 64)
        lines += [f"Cached from run [{run}]({url})." if url else f"Cached from run {run}.", ""]
    if result.status == StageStatus.FAILED and result.detail.strip():
        lines += [f"Reason: {escape_inline(first_line(result.detail, 300), 300)}", ""]
    if total > len(annotations):
        lines += [f"Annotations: the first {len(annotations):,} of {total:,} are shown.", ""]
    elif annotations:
        lines += [f"Annotations: {len(annotations):,}.", ""]
    if malformed:
        lines += [f"{malformed:,} malformed annotations were left out.", ""]
    tail = result.tail[-_TAIL_LIMIT:].strip("\n")
    if tail.strip():
        lines += ["Last lines of output (secrets masked; the full log is in the run):", ""]
        lines += fenced(tail)
    return CheckOutput(
        title=stage_title(result),
        summary="\n".join(lines).strip(),
        annotations=tuple(annotations),
    )


def crash_output(description: str) -> CheckOutput:
    line = first_line(description, 200) or "the run's process is gone"
    return CheckOutput(
        title=f"infrastructure crashed: {line}",
        summary=(
            "**failure**: the run's infrastructure crashed (not the code). "
            f"{escape_inline(description, 500)}"
        ),
    )


class StageCheckRuns:
    """The check runs of one pipeline run's stages on one commit."""

    def __init__(
        self,
        client: GitHubClient,
        repository: str,
        sha: str,
        *,
        ui_url: str | None = None,
        annotation_cap: int = ANNOTATION_CAP,
    ) -> None:
        self._client = client
        self.repository = repository
        self.sha = sha
        self._ui_url = ui_url
        self._cap = annotation_cap
        # Check run ids of this run's stages, by check run name, as GitHub answered them.
        self._ids: dict[str, int] = {}

    async def started(self, name: str, *, external_id: str | None, details_url: str | None) -> None:
        run = await self._client.create_check_run(
            self.repository,
            self.sha,
            name,
            status="in_progress",
            started_at=datetime.now(UTC),
            details_url=details_url,
            external_id=external_id,
        )
        self._ids[name] = run.id

    async def finished(
        self,
        name: str,
        result: StageResult,
        *,
        external_id: str | None,
        details_url: str | None,
    ) -> None:
        output = stage_output(result, ui_url=self._ui_url, cap=self._cap)
        conclusion = conclusion_of(result)
        check_run_id = self._ids.pop(name, None)
        if check_run_id is None:
            # Its start was not reported (GitHub was unreachable then): report it whole now.
            await self._client.create_check_run(
                self.repository,
                self.sha,
                name,
                status="completed",
                conclusion=conclusion,
                completed_at=datetime.now(UTC),
                details_url=details_url,
                external_id=external_id,
                output=output,
            )
            return
        await self._client.update_check_run(
            self.repository,
            check_run_id,
            status="completed",
            conclusion=conclusion,
            completed_at=datetime.now(UTC),
            details_url=details_url,
            output=output,
        )

    async def crashed(
        self,
        names: Sequence[str],
        description: str,
        *,
        fallback_name: str,
        crashed_run_id: str,
        pipeline: str | None,
        pr_number: int | None,
        details_url: str | None,
    ) -> None:
        """Complete as ``failure`` the check runs the crashed run left in progress (GitHub has
        no ``error`` conclusion). A stage of ``names`` that has none (its start never reached
        GitHub) gets a completed one, and so does ``fallback_name`` when nothing was in flight:
        a required check never waits for a dead run."""
        listed = await self._client.list_check_runs_for_ref(
            self.repository, self.sha, latest_only=False
        )
        # Every run of the commit, replaced ones too: a retry may already have started the
        # same stage, and the crashed run's own check run must still end.
        mine = [r for r in listed if _made_by(r, crashed_run_id)]
        in_flight = [r for r in mine if r.status != "completed"]
        output = crash_output(description)
        for run in in_flight:
            await self._client.update_check_run(
                self.repository,
                run.id,
                status="completed",
                conclusion="failure",
                completed_at=datetime.now(UTC),
                details_url=details_url,
                output=output,
            )
        reported = {r.name for r in mine}
        missing = [n for n in names if n not in reported]
        if not in_flight and not missing and not names:
            missing = [fallback_name]
        external_id = external_id_for(pipeline, pr_number, crashed_run_id)
        for name in dict.fromkeys(missing):
            await self._client.create_check_run(
                self.repository,
                self.sha,
                name,
                status="completed",
                conclusion="failure",
                completed_at=datetime.now(UTC),
                details_url=details_url,
                external_id=external_id,
                output=output,
            )


def _made_by(run: CheckRun, flow_run_id: str) -> bool:
    return bool(run.external_id) and str(run.external_id).endswith(f":{flow_run_id}")


def external_id_for(
    pipeline: str | None, pr_number: int | None, flow_run_id: str | None
) -> str | None:
    """The check run's ``external_id``, or None when the run is not known well enough to name."""
    if not pipeline or not flow_run_id:
        return None
    try:
        return check_external_id(pipeline, pr_number, flow_run_id)
    except ValueError as exc:
        logger.warning("check run without external_id: %s", exc)
        return None
