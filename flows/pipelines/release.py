"""The release pipeline: promote a staging-verified candidate to production, after approval."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from clients.metrics import load_metrics
from core.identity import identity_of, repository_slug
from core.links import flow_run_url
from core.release_policy import PolicyError, load_release_policy
from flows.config import ConfigError, load_config
from flows.deploy.runtime import deploy_target, registry_address
from flows.deploy.stage import deploy_images, deploy_lock
from flows.deploy.targets import DeployRequest
from flows.logs import step_logger
from flows.pipelines.approval import GateResult, wait_for_approval
from flows.pipelines.candidates import release_candidate
from flows.pipelines.observers import (
    MetricsObserver,
    Observers,
    pipeline_observers,
    queue_time_hook,
)
from flows.pipelines.stages import PipelineSummary, finish, finish_cancelled, run_stage
from flows.records.announce import announce_release
from flows.records.board import board_hook
from flows.records.store import (
    Outcome,
    ReleaseCandidate,
    ReleaseRecord,
    list_releases,
    record_release,
)
from flows.results import RunContext, StageResult, StageStatus
from flows.steps.checkout import CheckoutError, checkout
from flows.steps.e2e import run_against
from flows.supply.stage import verify_provenance
from flows.supply.verify import Expected

DIGEST_REF = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


class ReleaseRefused(RuntimeError):
    """The candidate cannot be released: nothing was deployed."""


async def verify_candidate(candidate: ReleaseCandidate) -> None:
    """Only what a completed merge run verified on staging may reach production."""
    for name, ref in candidate.images.items():
        if not DIGEST_REF.match(ref):
            raise ReleaseRefused(f"image {name} is not pinned by digest: {ref!r}")
    if not candidate.recorded_by_run or candidate.recorded_by_run != candidate.flow_run_id:
        raise ReleaseRefused(f"candidate {candidate.id} was not recorded by its merge run")
    async with get_client() as client:
        try:
            run = await client.read_flow_run(uuid.UUID(candidate.flow_run_id))
            flow_name = (await client.read_flow(run.flow_id)).name
        except Exception as exc:
            raise ReleaseRefused(f"candidate {candidate.id}: its merge run is unknown") from exc
    if flow_name != "merge-pipeline" or run.state is None or not run.state.is_completed():
        raise ReleaseRefused(
            f"candidate {candidate.id}: run {run.name} is not a completed merge pipeline run"
        )


def release_run_name() -> str:
    params = flow_run.parameters
    what = "rollback" if params.get("rollback") else "release"
    repo = params.get("repository_name") or params.get("repository") or "repo"
    return f"{what}-{str(repo).rsplit('/', 1)[-1]}"


async def _rollback_candidate(slug: str) -> str | None:
    """What a rollback restores: the newest successful release production does not serve now.

    Asked of production itself, not of the records alone: after a release that failed half-way
    without rolling back, the newest good release is the one to restore; after a good release,
    the one before it.
    """
    serving = await (await deploy_target("production")).current(slug, "production")
    for record in await list_releases(slug):
        if record.outcome == "success" and record.images != serving:
            return record.candidate_id
    return None


@flow(
    name="release-pipeline",
    flow_run_name=release_run_name,
    log_prints=True,
    on_running=[queue_time_hook("release")],
    on_completion=[board_hook],
    on_failure=[board_hook],
)
async def release_pipeline(
    repository_name: str | None = None,
    repository: str | None = None,
    repository_id: int | None = None,
    candidate_id: str | None = None,
    tag: str | None = None,
    triggered_by: str | None = None,
    rollback: bool = False,
    received_at: datetime | None = None,
) -> State[PipelineSummary]:
    """Deploy a release candidate's digests to production once an approver says so.

    Without ``candidate_id`` the newest candidate is released; with ``rollback`` the
    candidate of the previous successful release is. ``received_at`` is when the webhook
    arrived; only the queue-time hook reads it. Who may approve, how long the release waits and
    whether a rollback needs an approval come from the worker's release policy file, never from
    a parameter.
    """
    del received_at
    logger = step_logger("release")
    started_at = datetime.now(UTC)
    started = time.monotonic()
    identity = identity_of(repository, repository_name, repository_id)
    slug = identity.slug
    if rollback and candidate_id is None:
        candidate_id = await _rollback_candidate(slug)
        if candidate_id is None:
            # Nothing to do is not a failure, but it is a run: summarized and counted.
            why = f"no earlier successful release of {slug} to roll back to"
            context = RunContext(
                pipeline="release",
                repository=repository or "",
                sha="",
                repository_name=repository_name,
                ref=tag,
            )
            nothing = StageResult(name="candidate", status=StageStatus.CANCELLED, detail=why)
            return await finish_cancelled(context, [nothing], started, f"{why}; nothing deployed")
    candidate, wanted = await release_candidate(identity, repository, candidate_id, tag)
    context = RunContext(
        pipeline="release",
        repository=candidate.repository if candidate else repository or "",
        sha=candidate.commit_sha if candidate else "",
        repository_name=repository_name,
        ref=tag,
    )
    refused = StageResult(name="candidate", status=StageStatus.FAILED)
    if candidate is None:
        detail = f"no release candidate {wanted} recorded for {slug}: nothing deployed"
        return await finish(context, [refused.model_copy(update={"detail": detail})], started)
    try:
        await verify_candidate(candidate)
    except ReleaseRefused as exc:
        detail = f"refused: {exc}; nothing deployed"
        return await finish(context, [refused.model_copy(update={"detail": detail})], started)
    logger.info(
        "candidate %s: commit %s, images %s", candidate.id, candidate.commit_sha, candidate.images
    )

    try:
        policy = await asyncio.to_thread(load_release_policy)
    except PolicyError as exc:
        # Never a silent default: without the worker's policy nobody can approve.
        logger.error("%s", exc)
        failed = StageResult(
            name="approval", status=StageStatus.FAILED, detail=f"refused: {exc}; nothing deployed"
        )
        return await finish(context, [failed], started)
    # The candidate record is only an index: the registry's signed statements decide.
    provenance = await run_stage(
        "provenance",
        verify_provenance.with_options(task_run_name="provenance")(
            candidate.images,
            registry_address(),
            Expected(
                commit=candidate.commit_sha,
                repository=identity.full_name,
                repository_id=identity.id,
            ),
            policy.waive_failed_scan,
            policy.allow_unscanned,
            return_state=True,
        ),
    )
    if provenance.status != StageStatus.PASSED:
        detail = f"refused before the approval gate: {provenance.detail}; nothing deployed"
        logger.error("%s", detail)
        refusal = ReleaseRecord(
            id=f"rel-{uuid.uuid4().hex[:10]}",
            repository_slug=slug,
            candidate_id=candidate.id,
            commit_sha=candidate.commit_sha,
            images=candidate.images,
            triggered_by=triggered_by,
            outcome="failed",
            detail=detail,
            flow_run_id=str(flow_run.get_id() or ""),
            started_at=started_at,
            commit_time=candidate.commit_time,
        )
        await record_release(refusal)
        stage = provenance.model_copy(update={"detail": detail})
        data: dict[str, Any] = {
            "candidate": candidate.id,
            "images": candidate.images,
            "release": refusal.id,
        }
        return await finish(context, [stage], started, data)
    skip_approval = rollback and policy.allow_rollback_without_approval
    metrics = await load_metrics()
    asked = time.monotonic()
    gate = (
        GateResult(outcome="approved", approver="(policy: rollback without approval)")
        if skip_approval
        else await wait_for_approval(
            candidate,
            policy,
            str(flow_run.get_id() or ""),
            metrics,
            context.repository_name or repository_slug(context.repository),
            "Roll back" if rollback else "Release",
        )
    )
    waited = time.monotonic() - asked
    approval = await _approval_stage(gate, skip_approval, waited, policy.approval_timeout, context)
    base = {
        "id": f"rel-{uuid.uuid4().hex[:10]}",
        "repository_slug": slug,
        "candidate_id": candidate.id,
        "commit_sha": candidate.commit_sha,
        "images": candidate.images,
        "triggered_by": triggered_by,
        "approved_by": gate.approver,
        "decision_comment": gate.reason or None,
        "flow_run_id": str(flow_run.get_id() or ""),
        "started_at": started_at,
        "commit_time": candidate.commit_time,
    }
    if gate.outcome != "approved":
        outcome: Outcome = "rejected" if gate.outcome == "rejected" else "timed_out"
        why = approval.detail
        await record_release(ReleaseRecord(**base, outcome=outcome, detail=why))
        data = {"candidate": candidate.id, "images": candidate.images}
        return await finish_cancelled(
            context, [provenance, approval], started, f"{why}; nothing deployed", data
        )

    async with pipeline_observers(context) as observers:
        stages, data, outcome, detail = await _promote(candidate, slug, observers)
    record = ReleaseRecord(
        **base,
        outcome=outcome,
        detail=detail,
        previous_images=data.get("previous_images", {}),
    )
    await record_release(record)
    # Not prefect.runtime's get_flow_run_ui_url: its route is not the one in url_for's table of
    # UI routes, and it answers "None/..." when no UI address is set.
    await announce_release(record, flow_run_url(flow_run.get_id()))
    data.update({"release": record.id, "approved_by": gate.approver, "candidate": candidate.id})
    return await finish(context, [provenance, approval, *stages], started, data)


async def _approval_stage(
    gate: GateResult, skipped: bool, waited: float, timeout: int, context: RunContext
) -> StageResult:
    """The gate as a stage of the run: who decided and how long the release waited for it."""
    if skipped:
        status, detail = StageStatus.SKIPPED, "not needed: the release policy allows this rollback"
    elif gate.outcome == "approved":
        status, detail = StageStatus.PASSED, f"approved by {gate.approver}"
    elif gate.outcome == "rejected":
        reason = gate.reason or "no reason given"
        status, detail = StageStatus.CANCELLED, f"rejected by {gate.approver}: {reason}"
    else:
        status, detail = StageStatus.CANCELLED, f"no approval within {timeout} s"
    stage = StageResult(name="approval", status=status, seconds=round(waited, 3), detail=detail)
    repository = context.repository_name or repository_slug(context.repository)
    await MetricsObserver(await load_metrics(), "release", repository).stage_finished(
        "approval", stage
    )
    return stage


async def _promote(
    candidate: ReleaseCandidate, slug: str, observers: Observers
) -> tuple[list[StageResult], dict[str, Any], Outcome, str]:
    """Deploy the candidate's digests, smoke test, roll back on failure."""
    stages: list[StageResult] = []
    data: dict[str, Any] = {"images": candidate.images}
    try:
        async with checkout(candidate.repository, candidate.commit_sha, "release") as workspace:
            try:
                config = load_config(workspace)
            except ConfigError as exc:
                return [_failed("config", str(exc))], data, "failed", str(exc)
            request = DeployRequest(
                repository_slug=slug,
                environment="production",
                images=candidate.images,
                image_specs=config.images,
                manifests_dir=workspace / config.deploy.manifests if config.deploy else None,
                workspace=workspace,
                commit_sha=candidate.commit_sha,
                timeout=config.deploy.timeout if config.deploy else 300.0,
            )
            async with deploy_lock(slug, "production"):
                github = await observers.deployment_started(
                    "production", candidate.commit_sha, True
                )
                deploy = await run_stage(
                    "deploy-production",
                    deploy_images.with_options(task_run_name="deploy-production")(
                        request, return_state=True
                    ),
                    observers.stages,
                )
                stages.append(deploy)
                previous: dict[str, str] = dict(deploy.data.get("previous_images") or {})
                data["previous_images"] = previous
                url = str(deploy.data.get("url") or "")
                if deploy.status != StageStatus.PASSED:
                    await observers.deployment_finished(github, False, url, "production")
                    rolled = bool(deploy.data.get("rolled_back"))
                    return stages, data, "rolled_back" if rolled else "failed", deploy.detail
                data["production_url"] = url
                smoke = await run_stage(
                    "smoke",
                    run_against.with_options(task_run_name="smoke")(
                        "smoke",
                        config.smoke or config.e2e,
                        config.sandbox,
                        workspace,
                        url,
                        "production",
                        return_state=True,
                    ),
                    observers.stages,
                )
                stages.append(smoke)
                if smoke.status == StageStatus.FAILED:
                    restored = await _roll_back(request, previous, observers)
                    stages.append(restored)
                    await observers.deployment_finished(github, False, url, "production")
                    if restored.status == StageStatus.PASSED:
                        why = "smoke check failed; production rolled back to the previous release"
                        return stages, data, "rolled_back", why
                    return stages, data, "failed", f"smoke check failed; {restored.detail}"
                await observers.deployment_finished(github, True, url, "production")
    except CheckoutError as exc:
        return [*stages, _failed("checkout", str(exc))], data, "failed", str(exc)
    return stages, data, "success", "released"


async def _roll_back(
    request: DeployRequest, previous: dict[str, str], observers: Observers
) -> StageResult:
    if not previous:
        return _failed("rollback", "nothing ran in production before: there is nothing to restore")
    target = await deploy_target("production")
    back = request.model_copy(update={"images": previous, "commit_sha": ""})
    result = await run_stage(
        "rollback",
        deploy_images.with_options(task_run_name="rollback")(back, target, return_state=True),
        observers.stages,
    )
    return result.model_copy(update={"name": "rollback"})


def _failed(name: str, detail: str) -> StageResult:
    return StageResult(name=name, status=StageStatus.FAILED, detail=detail)
