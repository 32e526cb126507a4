"""What guards production: each candidate guard met alone, and rollback to the newest good release.

A release refuses a candidate unless, in this order, every image is pinned by digest, the record
was written by the run it names, and that run is a completed merge run. Each forged candidate
below passes the guards before the one that stops it, so the refusal it gets names that guard.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import FlowRun, State

from core.identity import RepositoryIdentity
from deployments.stack import Stack
from flows.pipelines.merge import merge_pipeline
from flows.pipelines.stages import PipelineSummary
from flows.records.board import board_key
from flows.records.store import ReleaseCandidate, candidate_key, list_candidates
from tests.fakes.github_api import FakeGitHub
from tests.flows.pipelines.approvers import Approvers
from tests.flows.pipelines.service_repo import commit_version
from tests.flows.pipelines.test_release_pipeline import (
    Service,
    approvers,
    final,
    paused,
    policy,
    production_deployments,
    production_url,
    read_run,
    release,
    rollback_cli,
    rollback_policy,
    served,
    service,
    wait_for,
)
from tests.plugins import deadlines
from tests.plugins.stack import as_json, gantry

pytestmark = [pytest.mark.slow, pytest.mark.engine]
# The shared fixtures of the release tests: the approvers' keys, the worker's release policy.
FIXTURES = (approvers, policy, rollback_policy, service)


def write_candidate(candidate: ReleaseCandidate, written_by: str) -> None:
    """Record ``candidate`` as the Prefect server would say run ``written_by`` wrote it.

    Any API client may name the run an artifact belongs to: the guards must hold anyway.
    """

    async def write() -> None:
        async with get_client() as client:
            await client.create_artifact(
                ArtifactCreate(
                    key=candidate_key(candidate.repository_slug),
                    type="table",
                    data=json.dumps(
                        [{"candidate": candidate.id, "record": candidate.model_dump_json()}]
                    ),
                    flow_run_id=uuid.UUID(written_by),
                )
            )

    asyncio.run(write())


def forge(
    real: ReleaseCandidate, images: dict[str, str], commit: str, names: str, written_by: str
) -> ReleaseCandidate:
    """A copy of ``real`` with other images and commit that names run ``names`` as its merge
    run, recorded as written by run ``written_by``."""
    forged = real.model_copy(
        update={
            "id": f"rc-forged-{uuid.uuid4().hex[:6]}",
            "images": images,
            "commit_sha": commit,
            "flow_run_id": names,
            # Only the server says who wrote a record: it is filled in when read back.
            "recorded_by_run": None,
        }
    )
    write_candidate(forged, written_by)
    return forged


def stopped(run: FlowRun) -> bool:
    """Refused (final), or let through to the approval gate: a removed guard shows at once."""
    return final(run) or paused(run)


def boards(service: Service) -> list[list[str]]:
    """Every version of the repository's board, each as its lines."""
    key = board_key(RepositoryIdentity(full_name=service.name))

    async def read() -> list[list[str]]:
        async with get_client() as client:
            versions = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
        return [str(version.data).splitlines() for version in versions]

    return asyncio.run(read())


def test_each_candidate_guard_alone_keeps_production_on_what_it_served(
    service: Service, approvers: Approvers, session_github: FakeGitHub
) -> None:
    merged = service.merge("v1")
    [real] = [
        c
        for c in asyncio.run(list_candidates(service.slug))
        if c.id == merged.data["release_candidate"]
    ]
    merge_run = real.flow_run_id
    assert real.recorded_by_run == merge_run, "the real candidate passes every guard"
    released = release(service, approvers)
    assert released.state is not None and released.state.is_completed(), released.state
    url = production_url(released)
    assert served(url) == "v1"

    # A merge of v2 that built, pushed and attested its digests, then failed staging E2E: the
    # digests a release must never deploy, though the registry vouches for their provenance.
    sha = commit_version(service.repo, "v2", e2e_fails=True)
    # Prefect's typing of a flow call cannot say what return_state returns.
    pipeline: Any = merge_pipeline
    state: State[Any] = asyncio.run(
        pipeline(str(service.repo.path), sha, repository_name=service.name, return_state=True)
    )
    assert state.is_failed(), state
    failed = asyncio.run(state.aresult(raise_on_failure=False))
    assert isinstance(failed, PipelineSummary) and failed.data.get("release_candidate") is None
    unverified: dict[str, str] = failed.data["images"]
    failed_merge = str(state.state_details.flow_run_id)
    release_run = str(released.id)

    tag_ref = {"web": real.images["web"].partition("@")[0] + ":v1"}
    # 1. Not pinned by digest, though the completed merge run it names wrote it.
    by_tag = forge(real, tag_ref, real.commit_sha, merge_run, merge_run)
    # 2. Pinned, naming the completed merge run, but written by the failed one.
    by_other = forge(real, unverified, sha, merge_run, failed_merge)
    # 3. Pinned and written by the run it names, which is not a completed merge run: a merge
    # that failed staging, and a completed run of another pipeline.
    by_failed = forge(real, unverified, sha, failed_merge, failed_merge)
    by_release = forge(real, unverified, sha, release_run, release_run)
    not_merge = "is not a completed merge pipeline run"
    cases = {
        by_tag.id: f"image web is not pinned by digest: {tag_ref['web']!r}",
        by_other.id: f"candidate {by_other.id} was not recorded by its merge run",
        by_failed.id: f"candidate {by_failed.id}: run {read_run(failed_merge).name} {not_merge}",
        by_release.id: f"candidate {by_release.id}: run {released.name} {not_merge}",
    }
    started = {candidate: service.start_release(candidate_id=candidate) for candidate in cases}
    for candidate, why in cases.items():
        run = wait_for(started[candidate], stopped)
        assert run.state is not None and run.state.is_failed(), (why, run.state)
        summary: Any = asyncio.run(run.state.aresult(raise_on_failure=False))
        assert isinstance(summary, PipelineSummary)
        [stage] = summary.stages
        assert (stage.name, stage.status.value) == ("candidate", "failed"), why
        assert stage.detail == f"refused: {why}; nothing deployed"
        # A refused release still updates the repository's board as it ends: its state hook
        # runs once Failed is recorded, so some version of the board soon shows it Failed.
        name = run.name
        deadlines.wait_for(
            f"a board showing {name} Failed",
            lambda name=name: any(
                name in line and "| Failed |" in line for b in boards(service) for line in b
            ),
            60,
        )

    # Production still serves v1; no release record but v1's, no new production deployment.
    assert served(url) == "v1"
    records = [(r.candidate_id, r.outcome) for r in service.releases()]
    assert records == [(real.id, "success")]
    assert len(production_deployments(session_github, service)) == 1


@pytest.mark.usefixtures("rollback_policy")
def test_rollback_by_repo_and_by_name_restores_the_newest_good_release(
    service: Service, approvers: Approvers, local_stack: Stack
) -> None:
    good = []
    for version in ("v1", "v2", "v3"):
        service.merge(version)
        url = production_url(release(service, approvers))
        good.append(service.releases()[0])
    assert served(url) == "v3"
    # A rolled-back release: v4's smoke check fails in production, which goes back to v3.
    smoke_failed = service.merge("v4", smoke_fails=True).data["release_candidate"]
    release(service, approvers)
    # A failed one: the worker's policy no longer accepts unscanned images (the test stack has
    # no scanner), so v4 is refused at provenance, before the gate.
    approvers.write_policy(
        local_stack.settings,
        "alice",
        approval_timeout=600,
        allow_rollback_without_approval=True,
        allow_unscanned=False,
    )
    refused = wait_for(service.start_release(), final)
    assert refused.state is not None and refused.state.is_failed(), refused.state
    # A rollback passes the same provenance check before the gate (here one the policy lets it
    # skip): v2's digests are refused too, and production stays on v3.
    back = wait_for(service.start_release(rollback=True), final)
    assert back.state is not None and back.state.is_failed(), back.state
    summary: Any = asyncio.run(back.state.aresult(raise_on_failure=False))
    assert isinstance(summary, PipelineSummary)
    [check] = summary.stages
    assert (check.name, check.status.value) == ("provenance", "failed")
    assert check.detail.startswith("refused before the approval gate: web: check scan failed")
    assert served(url) == "v3"
    approvers.write_policy(
        local_stack.settings, "alice", approval_timeout=600, allow_rollback_without_approval=True
    )
    records = service.releases()
    outcomes = [r.outcome for r in records]
    assert outcomes == ["failed", "failed", "rolled_back", "success", "success", "success"]
    assert records[0].candidate_id == good[1].candidate_id
    assert served(url) == "v3"
    assert len({r.candidate_id for r in good}) == 3
    # The release candidate stays recorded after its release was rolled back and then failed:
    # the runbook hands it to its team, and it can still be named.
    assert [r.candidate_id for r in records[1:3]] == [smoke_failed, smoke_failed]
    kept = [c.id for c in asyncio.run(list_candidates(service.slug))]
    assert smoke_failed in kept

    # The README's form, naming the repository by its clone URL: the slug it yields is the one
    # the named runs recorded. Past the failed and rolled-back records, and past v3 (served
    # now), the newest good release is v2, not the oldest.
    clone_url = f"https://github.com/{service.name}.git"
    args = ("rollback", "--env", "production", "--repo", clone_url, "--json")
    result = gantry(local_stack, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert as_json(result)["passed"]
    assert served(url) == "v2"
    restored = service.releases()[0]
    assert (restored.candidate_id, restored.outcome) == (good[1].candidate_id, "success")
    assert restored.images == good[1].images != good[0].images
    assert restored.triggered_by == "gantry rollback"

    # By --name: v2 is served now, so the newest good release it does not serve is v3 again.
    again = rollback_cli(local_stack, service)
    assert again.returncode == 0, again.stdout + again.stderr
    assert served(url) == "v3"
    assert service.releases()[0].candidate_id == good[2].candidate_id
