"""The approval gate of a release: the flow pauses until an allowed signer's signed answer comes.

An answer is a signed statement (core/approvals.py). The gate takes it only when the signature
is valid for a principal of the policy's allowed signers, the statement names this run, this
candidate and its digests, its time is recent, and the signer is not the commit's author (unless
the policy allows self-approval). Anything else is refused, logged with why, counted as
``gantry.release.approval_refused``, and the release keeps waiting until its deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, Field, ValidationError

from clients.metrics import Metrics
from core.approvals import (
    NAMESPACE,
    ApprovalError,
    ApprovalStatement,
    SignatureRefused,
    utc_timestamp,
    verify_statement,
)
from core.release_policy import ReleasePolicy
from flows.logs import step_logger
from flows.records.store import ReleaseCandidate

# How often the paused flow looks for an answer: an approval is acted on within this time.
POLL_SECONDS = 1
SERVER_PAUSE_GRACE = 300
# Tags a release run carries while it waits: what it asks approval for. The chat message, a
# Prefect automation that sees the run's tags but nothing of the flow's own state, names them,
# and the UI filters runs by them.
COMMIT_TAG = "commit:"
CANDIDATE_TAG = "candidate:"


class ApprovalDecision(RunInput):
    """The form the Prefect UI shows (and `gantry approve/reject` fills in): a signed statement."""

    run: str = Field(description="this release's flow run id (filled in)")
    candidate: str = Field(description="the release candidate's id (filled in)")
    digests: list[str] = Field(description="the candidate's image digests (filled in)")
    decision: str = Field(description="approve or reject")
    reason: str = Field(default="", max_length=1000)
    time: str = Field(default="", description="when you signed, UTC: YYYY-MM-DDTHH:MM:SSZ")
    signature: str = Field(
        default="", description="the whole armored text of ssh-keygen -Y sign's .sig file"
    )


class GateResult(BaseModel):
    outcome: str  # "approved", "rejected", "timed_out"
    approver: str | None = None
    reason: str = ""
    refused: list[str] = Field(default_factory=list)  # why each refused answer was refused


@dataclass(frozen=True)
class Refusal:
    code: str  # the metric's reason tag
    why: str


@dataclass(frozen=True)
class Accepted:
    approver: str
    statement: ApprovalStatement


def statement_template(run_id: str, candidate: ReleaseCandidate) -> ApprovalStatement:
    """The statement an approver of this run signs, with its time set to now."""
    return ApprovalStatement(
        run=run_id,
        candidate=candidate.id,
        digests=sorted(candidate.digests()),
        decision="approve",
        reason="",
        time=utc_timestamp(),
    )


def describe_candidate(candidate: ReleaseCandidate, action: str, run_id: str) -> str:
    images = "\n".join(f"- `{name}`: `{ref}`" for name, ref in sorted(candidate.images.items()))
    scan = ", ".join(f"{k}: {v}" for k, v in sorted(candidate.scan_summary.items())) or "none"
    example = statement_template(run_id, candidate).canonical().decode()
    return (
        f"## {action} `{candidate.repository_slug}` to production\n\n"
        f"- candidate: `{candidate.id}`\n- commit: `{candidate.commit_sha}`"
        f" by {candidate.commit_author or 'unknown'}\n"
        f"- staging E2E: **{candidate.e2e}** ({candidate.staging_url or 'n/a'})\n"
        f"- scan findings: {scan}\n- verified by run: `{candidate.flow_run_id}`\n\n"
        f"Images (by digest):\n{images}\n\n"
        "An answer is a statement signed with your SSH key (its public key must be on the "
        "release policy's allowed signers). `gantry approve RUN_ID` or `gantry reject RUN_ID "
        "--reason TEXT` does it all. By hand: write this statement (one line, no newline at "
        "the end) with **decision** `approve` or `reject`, your **reason**, and **time** set to "
        "now in UTC (`date -u +%Y-%m-%dT%H:%M:%SZ`):\n\n"
        f"```\n{example}\n```\n\n"
        "```\nprintf '%s' 'STATEMENT' > statement.json\n"
        f"ssh-keygen -Y sign -n {NAMESPACE} -f ~/.ssh/id_ed25519 statement.json\n```\n\n"
        "Then fill in **decision**, **reason** and **time** exactly as signed, and paste the "
        "whole text of `statement.json.sig` into **signature**."
    )


def judge(
    answer: ApprovalDecision, run_id: str, candidate: ReleaseCandidate, policy: ReleasePolicy
) -> Accepted | Refusal:
    """Whether ``answer`` is an approval (or rejection) this gate may act on, and if not, why."""
    if not answer.signature.strip():
        return Refusal("unsigned", "the answer carries no signature")
    try:
        statement = ApprovalStatement(
            run=answer.run,
            candidate=answer.candidate,
            digests=answer.digests,
            decision=answer.decision,  # validated by the model: approve or reject
            reason=answer.reason,
            time=answer.time,
        )
    except ValidationError as exc:
        fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
        return Refusal("malformed", f"the statement is malformed ({fields})")
    if statement.run != run_id:
        return Refusal("other_run", f"the statement is for another run ({statement.run})")
    if statement.candidate != candidate.id:
        return Refusal("other_candidate", f"the statement is for candidate {statement.candidate}")
    if statement.digests != sorted(candidate.digests()):
        return Refusal("digests", "the statement's digests are not the candidate's")
    if statement.skew() > policy.max_clock_skew:
        return Refusal(
            "stale",
            f"the statement's time {statement.time} is more than "
            f"{policy.max_clock_skew} s from now",
        )
    try:
        principals = verify_statement(statement, answer.signature, policy.allowed_signers)
    except SignatureRefused as exc:
        return Refusal("bad_signature", str(exc))
    except ApprovalError as exc:
        return Refusal("verify_error", str(exc))
    author = (candidate.commit_author or "").strip().lower()
    if not policy.allow_self_approval:
        if not author:
            return Refusal(
                "self_approval",
                "the commit's author is not recorded, so self-approval cannot be ruled out",
            )
        if author in {p.lower() for p in principals}:
            return Refusal("self_approval", f"{author} may not approve their own commit")
    return Accepted(approver=principals[0], statement=statement)


async def wait_for_approval(
    candidate: ReleaseCandidate,
    policy: ReleasePolicy,
    run_id: str,
    metrics: Metrics,
    repository: str,
    action: str = "Release",
) -> GateResult:
    """Pause until an allowed signer's valid answer comes or the policy's timeout passes.

    A refused answer is logged and counted; the flow pauses again for the time that is left.
    """
    logger = step_logger("approval")
    deadline = time.monotonic() + policy.approval_timeout
    await _tag_with_the_candidate(run_id, candidate)
    template = statement_template(run_id, candidate)
    form = ApprovalDecision.with_initial_data(
        description=describe_candidate(candidate, action, run_id),
        run=template.run,
        candidate=template.candidate,
        digests=template.digests,
        decision="approve",
    )
    refused: list[str] = []
    attempt = 0
    while True:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            return GateResult(outcome="timed_out", refused=refused)
        attempt += 1
        logger.info(
            "waiting up to %d s for a signed approval by one of %s",
            remaining,
            ", ".join(policy.principals()),
        )
        try:
            # A new key per attempt: a refused answer must not be read back as the next one.
            # The deadline is ours; the server's pause timeout is set later so that its
            # expiry service never fails the run before the flow can end it as Cancelled.
            answer = await asyncio.wait_for(
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
        verdict = await asyncio.to_thread(judge, answer, run_id, candidate, policy)
        if isinstance(verdict, Refusal):
            # Why, never the signature itself: it is the approver's, not the log's.
            logger.warning("answer refused (%s): %s", verdict.code, verdict.why)
            metrics.approval_refused(verdict.code, repository)
            refused.append(verdict.code)
            continue
        statement = verdict.statement
        outcome = "approved" if statement.decision == "approve" else "rejected"
        logger.info(
            "%s by %s (signed %s)%s",
            outcome,
            verdict.approver,
            statement.time,
            f": {json.dumps(statement.reason)}" if statement.reason else "",
        )
        return GateResult(
            outcome=outcome, approver=verdict.approver, reason=statement.reason, refused=refused
        )


async def _tag_with_the_candidate(run_id: str, candidate: ReleaseCandidate) -> None:
    """Tag the run with the commit and candidate it asks approval for, before it pauses."""
    wanted = [f"{COMMIT_TAG}{candidate.commit_sha}", f"{CANDIDATE_TAG}{candidate.id}"]
    try:
        async with get_client() as client:
            current = await client.read_flow_run(UUID(run_id))
            missing = [tag for tag in wanted if tag not in current.tags]
            if missing:
                await client.update_flow_run(UUID(run_id), tags=[*current.tags, *missing])
    except (httpx.HTTPError, ObjectNotFound) as exc:
        # The gate does not depend on it: the message then names no commit, the page does.
        step_logger("approval").warning("could not tag the run with its commit: %s", exc)
