"""The approval gate of a release: the flow pauses until an approver on the allowlist answers."""

from __future__ import annotations

import asyncio
import time

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field

from blocks.release import ReleasePolicy
from flows.logs import step_logger
from flows.records.store import ReleaseCandidate

# How often the paused flow looks for an answer: an approval is acted on within this time.
POLL_SECONDS = 1
SERVER_PAUSE_GRACE = 300


class ApprovalDecision(RunInput):
    """The form the Prefect UI shows (and `gantry approve/reject` fills in)."""

    approver: str = Field(description="who answers; must be on the release policy's allowlist")
    approve: bool = Field(description="true to release, false to reject")
    reason: str = Field(default="", max_length=1000)


class GateResult(BaseModel):
    outcome: str  # "approved", "rejected", "timed_out"
    approver: str | None = None
    reason: str = ""
    refused: list[str] = Field(default_factory=list)


def describe_candidate(candidate: ReleaseCandidate, action: str) -> str:
    images = "\n".join(f"- `{name}`: `{ref}`" for name, ref in sorted(candidate.images.items()))
    scan = ", ".join(f"{k}: {v}" for k, v in sorted(candidate.scan_summary.items())) or "none"
    return (
        f"## {action} `{candidate.repository_slug}` to production\n\n"
        f"- candidate: `{candidate.id}`\n- commit: `{candidate.commit_sha}`\n"
        f"- staging E2E: **{candidate.e2e}** ({candidate.staging_url or 'n/a'})\n"
        f"- scan findings: {scan}\n- verified by run: `{candidate.flow_run_id}`\n\n"
        f"Images (by digest):\n{images}\n\n"
        "Set **approver** to your name (it must be on the release allowlist) and **approve**."
    )


async def wait_for_approval(
    candidate: ReleaseCandidate, policy: ReleasePolicy, action: str = "Release"
) -> GateResult:
    """Pause until an allowed approver answers or the policy's timeout passes.

    An answer from anyone not on the allowlist is logged and refused; the flow pauses again
    for the time that is left.
    """
    logger = step_logger("approval")
    deadline = time.monotonic() + policy.approval_timeout
    form = ApprovalDecision.with_initial_data(
        description=describe_candidate(candidate, action), approve=False
    )
    refused: list[str] = []
    attempt = 0
    while True:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            return GateResult(outcome="timed_out", refused=refused)
        attempt += 1
        logger.info(
            "waiting up to %d s for approval by one of %s", remaining, policy.approvers or "nobody"
        )
        try:
            # A new key per attempt: a refused answer must not be read back as the next one.
            # The deadline is ours; the server's pause timeout is set later so that its
            # expiry service never fails the run before the flow can end it as Cancelled.
            decision = await asyncio.wait_for(
                apause_flow_run(
                    wait_for_input=form,
                    timeout=remaining + SERVER_PAUSE_GRACE,
                    poll_interval=POLL_SECONDS,
                    key=f"approval-{attempt}",
                ),
                timeout=remaining,
            )
        except (TimeoutError, FlowPauseTimeout):
            return GateResult(outcome="timed_out", refused=refused)
        who = decision.approver.strip()
        if not policy.may_approve(who):
            logger.warning("%r is not on the release allowlist: answer refused", who)
            refused.append(who)
            continue
        outcome = "approved" if decision.approve else "rejected"
        logger.info("%s by %s %s", outcome, who, f"({decision.reason})" if decision.reason else "")
        return GateResult(outcome=outcome, approver=who, reason=decision.reason, refused=refused)
