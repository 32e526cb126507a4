"""The merge pipeline: verify as for a PR, push by digest, attest, deploy to staging, E2E."""

from __future__ import annotations

import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from core.identity import RepositoryIdentity, identity_of
from core.links import flow_run_url
from flows.config import ConfigError, GantryConfig, load_config
from flows.deploy.runtime import docker_host, registry_address
from flows.deploy.stage import deploy_images, deploy_lock
from flows.deploy.targets import DeployRequest
from flows.pipelines.observers import Observers, pipeline_observers, queue_time_hook
from flows.pipelines.pr import failed_before_stages, verification_stage_calls
from flows.pipelines.stages import PipelineSummary, finish, run_stage, run_stages
from flows.records.board import board_hook
from flows.records.store import ReleaseCandidate, record_candidate
from flows.results import RunContext, StageResult, StageStatus
from flows.steps.checkout import CheckoutError, checkout
from flows.steps.e2e import run_against
from flows.steps.images import push_images
from flows.steps.source import SourceError, run_source, stale_push
from flows.supply.stage import attest_images, scan_verdict

AFTER_VERIFY = ("push", "attest", "deploy-staging", "e2e")


def not_reached(names: tuple[str, ...], why: str) -> list[StageResult]:
    return [StageResult(name=n, status=StageStatus.SKIPPED, detail=why) for n in names]


def _show(workspace: Path, sha: str, field: str) -> str | None:
    shown = subprocess.run(
        ["git", "-C", str(workspace), "show", "-s", f"--format={field}", sha],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return shown.stdout.strip() if shown.returncode == 0 else None


def commit_time(workspace: Path, sha: str) -> datetime | None:
    """When the change was committed: the start of its lead time to production."""
    try:
        return datetime.fromisoformat(_show(workspace, sha, "%cI") or "")
    except ValueError:
        return None


def commit_author(workspace: Path, sha: str) -> str | None:
    """The commit's author email: who may not approve its release alone."""
    return (_show(workspace, sha, "%ae") or "").lower() or None


def merge_run_name() -> str:
    params = flow_run.parameters
    return f"merge-{params.get('ref') or 'main'}-{str(params.get('sha', ''))[:7]}"


async def _still_head(
    identity: RepositoryIdentity, context: RunContext, checked: bool
) -> list[StageResult] | None:
    """None when this push may deploy; else the stages after verification, not reached.

    ``checked`` runs (built from the identity, as webhooks start them) ask GitHub whether the
    commit is still its branch's head: an old signed delivery replayed under a new id must not
    put old code on staging and make it the newest candidate. An operator's run is theirs.
    """
    if not checked:
        return None
    try:
        why = await stale_push(identity, context.ref or "main", context.sha)
    except SourceError as exc:
        return [failed_before_stages("head", str(exc)), *not_reached(AFTER_VERIFY, str(exc))]
    return None if why is None else not_reached(AFTER_VERIFY, why)


async def _deliver(
    context: RunContext,
    identity: RepositoryIdentity,
    config: GantryConfig,
    workspace: Path,
    verified: list[StageResult],
    observers: Observers,
) -> tuple[list[StageResult], dict[str, Any]]:
    """Push, deploy to staging and run E2E; returns their stages and the facts for the summary."""
    slug = identity.slug
    build = next(s for s in verified if s.name == "build")
    if build.status != StageStatus.PASSED:
        return not_reached(AFTER_VERIFY, "no images were built"), {}
    push = await run_stage(
        "push",
        push_images.with_options(task_run_name="push")(
            build, registry_address(), None, docker_host(), context.fork, return_state=True
        ),
        observers.stages,
    )
    if push.status != StageStatus.PASSED:
        return [push, *not_reached(AFTER_VERIFY[1:], "push failed")], {}
    images = {name: entry["pinned"] for name, entry in push.data.get("images", {}).items()}
    data: dict[str, Any] = {"images": images}
    attest = await _attest(context, identity, images, verified, observers)
    data["attestations"] = attest.data.get("attestations", {})
    if attest.status != StageStatus.PASSED:
        # An image nobody can verify must never reach staging, let alone be a candidate.
        data["release_candidate"] = None
        data["not_a_candidate"] = "attestation failed"
        return [push, attest, *not_reached(AFTER_VERIFY[2:], "attestation failed")], data
    request = DeployRequest(
        repository_slug=slug,
        environment="staging",
        images=images,
        image_specs=config.images,
        manifests_dir=workspace / config.deploy.manifests if config.deploy else None,
        workspace=workspace,
        commit_sha=context.sha,
        timeout=config.deploy.timeout if config.deploy else 300.0,
    )
    async with deploy_lock(slug, "staging"):
        github_deployment = await observers.deployment_started("staging", context.sha, False)
        deploy = await run_stage(
            "deploy-staging",
            deploy_images.with_options(task_run_name="deploy-staging")(request, return_state=True),
            observers.stages,
        )
        await observers.deployment_finished(
            github_deployment, deploy.ok, str(deploy.data.get("url") or ""), "staging"
        )
        if deploy.status != StageStatus.PASSED:
            return [push, attest, deploy, *not_reached(("e2e",), "staging deploy failed")], data
        url = str(deploy.data.get("url") or "")
        data["staging_url"] = url
        e2e = await run_stage(
            "e2e",
            run_against.with_options(task_run_name="e2e")(
                "e2e", config.e2e, config.sandbox, workspace, url, "staging", return_state=True
            ),
            observers.stages,
        )
    if e2e.status == StageStatus.PASSED:
        candidate = ReleaseCandidate(
            id=f"rc-{context.sha[:12]}-{uuid.uuid4().hex[:6]}",
            repository=context.repository,
            repository_slug=slug,
            repository_name=context.repository_name,
            repository_full_name=identity.full_name,
            repository_id=identity.id,
            commit_sha=context.sha,
            images=images,
            flow_run_id=str(flow_run.get_id() or ""),
            scan_summary=dict(
                next((s.data.get("counts", {}) for s in verified if s.name == "scan"), {})
            ),
            staging_url=url,
            commit_time=commit_time(workspace, context.sha),
            commit_author=commit_author(workspace, context.sha),
        )
        await record_candidate(candidate)
        data["release_candidate"] = candidate.id
    else:
        why = e2e.detail or "E2E did not pass"
        data["release_candidate"] = None
        data["not_a_candidate"] = why
    return [push, attest, deploy, e2e], data


async def _attest(
    context: RunContext,
    identity: RepositoryIdentity,
    images: dict[str, str],
    verified: list[StageResult],
    observers: Observers,
) -> StageResult:
    """The SBOM and signed provenance of each pushed digest, attached in the registry."""
    run_id = str(flow_run.get_id() or "")
    verdict, counts = scan_verdict(verified)
    return await run_stage(
        "attest",
        attest_images.with_options(task_run_name="attest")(
            images,
            registry_address(),
            identity.full_name,
            identity.id,
            context.sha,
            run_id,
            flow_run_url(run_id),
            verdict,
            counts,
            return_state=True,
        ),
        observers.stages,
    )


@flow(
    name="merge-pipeline",
    flow_run_name=merge_run_name,
    log_prints=True,
    on_running=[queue_time_hook("merge")],
    on_completion=[board_hook],
    on_failure=[board_hook],
)
async def merge_pipeline(
    repository: str | None,
    sha: str,
    ref: str = "main",
    repository_name: str | None = None,
    no_cache: bool = False,
    received_at: datetime | None = None,
    repository_id: int | None = None,
) -> State[PipelineSummary]:
    """Verify, push by digest, attest, deploy to staging, run E2E; a pass records a candidate.

    Webhooks name the repository by ``repository_name`` and ``repository_id`` only (``repository``
    None): it is cloned from the worker's Git host, and a commit that is no longer the head of
    ``ref`` deploys nothing. An operator's run names a path or URL in ``repository``.
    ``received_at`` is when the webhook arrived; only the queue-time hook reads it.
    """
    del received_at
    started = time.monotonic()
    try:
        identity = identity_of(repository, repository_name, repository_id)
        source = run_source(repository, identity)
    except (ValueError, CheckoutError) as exc:
        context = RunContext(
            pipeline="merge", repository=repository or "", sha=sha, repository_name=None, ref=ref
        )
        return await finish(context, [failed_before_stages("checkout", str(exc))], started)
    context = RunContext(
        pipeline="merge", repository=source, sha=sha, repository_name=repository_name, ref=ref
    )
    async with pipeline_observers(context) as observers:
        return await _merge(context, identity, not repository, no_cache, observers)


async def _merge(
    context: RunContext,
    identity: RepositoryIdentity,
    checked: bool,
    no_cache: bool,
    observers: Observers,
) -> State[PipelineSummary]:
    started = time.monotonic()
    repository, sha = context.repository, context.sha
    try:
        async with checkout(repository, sha, name=f"merge-{sha[:12]}") as workspace:
            try:
                config = load_config(workspace)
            except ConfigError as exc:
                return await finish(context, [failed_before_stages("config", str(exc))], started)
            verified = await run_stages(
                verification_stage_calls(context, config, workspace, no_cache), observers.stages
            )
            if any(s.status == StageStatus.FAILED for s in verified):
                skipped = not_reached(AFTER_VERIFY, "verification failed")
                return await finish(
                    context, verified + skipped, started, {"release_candidate": None}
                )
            stale = await _still_head(identity, context, checked)
            if stale is not None:
                data = {"release_candidate": None, "not_a_candidate": stale[-1].detail}
                return await finish(context, verified + stale, started, data)
            delivered, data = await _deliver(
                context, identity, config, workspace, verified, observers
            )
    except CheckoutError as exc:
        return await finish(context, [failed_before_stages("checkout", str(exc))], started)
    return await finish(context, verified + delivered, started, data)
