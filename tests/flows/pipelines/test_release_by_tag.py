"""A GitHub release of a tag, through the real release pipeline: the tag's commit is what ships.

One repository on the test stack's Git host gets two real merge runs (two candidates at two
commits, each digest attested); the older commit is tagged, and a third, never merged commit
gets a tag too. Each release starts from a `release` webhook payload mapped by the receiver's
own code, so the run gets exactly the parameters a GitHub release gives it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment

from deployments.stack import Stack
from flows.deploy.runtime import deploy_target
from flows.pipelines.merge import merge_pipeline
from flows.pipelines.stages import PipelineSummary
from tests.fakes.github_api import FakeGitHub
from tests.flows.pipelines.approvers import Approvers
from tests.flows.pipelines.service_repo import commit_version
from tests.flows.pipelines.test_merge_identity import hosted
from tests.flows.pipelines.test_release_pipeline import (
    Service,
    final,
    paused,
    production_deployments,
    production_url,
    served,
    summary_rows,
    wait_for,
)
from tests.webhooks import payloads
from webhooks.events import PipelineRequest, map_event

pytestmark = [pytest.mark.slow, pytest.mark.engine]


@dataclass(frozen=True)
class Merged:
    sha: str
    candidate_id: str
    images: dict[str, str]


@dataclass(frozen=True)
class Tagged:
    """The repository, its two merged commits (older one tagged), and a tagged unmerged one."""

    service: Service
    repository_id: int
    older: Merged
    newer: Merged
    unmerged: str


OLDER_TAG = "v1.0.0"
UNMERGED_TAG = "v3.0.0"


def merge_head(github: FakeGitHub, service: Service, repository_id: int, version: str) -> Merged:
    """Commit ``version`` as the new head of main and merge it as a push webhook would."""
    sha = commit_version(service.repo, version)
    github.set_branch(service.name, "main", sha)

    async def run() -> Any:
        return await merge_pipeline(
            None,
            sha,
            ref="main",
            repository_name=service.name,
            repository_id=repository_id,
            return_state=True,
        )

    state = asyncio.run(run())
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, PipelineSummary)
    assert state.is_completed(), summary.stages
    assert summary.data["release_candidate"], summary.stages
    return Merged(sha, summary.data["release_candidate"], dict(summary.data["images"]))


@pytest.fixture(scope="module")
def tagged(local_stack: Stack, session_github: FakeGitHub) -> Tagged:
    name = f"acme/bytag-{uuid.uuid4().hex[:6]}"
    service = Service(hosted(local_stack, name), name)
    repository_id = 70_000 + uuid.uuid4().int % 10_000
    older = merge_head(session_github, service, repository_id, "v1")
    service.repo.git("tag", "-a", OLDER_TAG, "-m", "release v1")
    newer = merge_head(session_github, service, repository_id, "v2")
    unmerged = commit_version(service.repo, "v3")
    service.repo.git("tag", UNMERGED_TAG)
    assert older.images != newer.images, "two commits, two sets of digests"
    return Tagged(service, repository_id, older, newer, unmerged)


@pytest.fixture(scope="module")
def approvers(tmp_path_factory: pytest.TempPathFactory) -> Approvers:
    return Approvers(tmp_path_factory.mktemp("by-tag-approver-keys"))


@pytest.fixture(autouse=True)
def policy(local_stack: Stack, approvers: Approvers) -> None:
    """The worker's release policy file: alice may approve (other modules write their own)."""
    approvers.write_policy(local_stack.settings, "alice", approval_timeout=600)


def release_published(tagged: Tagged, tag: str) -> str:
    """Start the run a `release` webhook (action published) of ``tag`` asks for; its id."""
    payload = payloads.release(tag=tag)
    payload["repository"] = {
        **payloads.repository(tagged.service.name),
        "id": tagged.repository_id,
    }
    request = map_event("release", f"delivery-{uuid.uuid4().hex}", payload)
    assert isinstance(request, PipelineRequest), request
    assert request.parameters["tag"] == tag and request.parameters["candidate_id"] is None

    async def start() -> FlowRun:
        run: FlowRun = await arun_deployment(
            request.deployment, parameters=request.parameters, timeout=0
        )
        return run

    return str(asyncio.run(start()).id)


def serving(service: Service) -> dict[str, str]:
    """The image references production runs for ``service`` now, asked of the target itself."""

    async def ask() -> dict[str, str]:
        return await (await deploy_target("production")).current(service.slug, "production")

    return asyncio.run(ask())


def production_as_seen(tagged: Tagged, github: FakeGitHub) -> tuple[object, ...]:
    """What production runs, the releases recorded and GitHub's production deployments."""
    service = tagged.service
    return (
        serving(service),
        [r.id for r in service.releases()],
        len(production_deployments(github, service)),
    )


def settled(run: FlowRun) -> bool:
    """Ended, or waiting at the approval gate (which a refused release never reaches)."""
    return final(run) or paused(run)


def test_a_release_of_a_tag_deploys_that_older_commits_images_not_the_newest(
    tagged: Tagged, approvers: Approvers, session_github: FakeGitHub
) -> None:
    run_id = release_published(tagged, OLDER_TAG)
    wait_for(run_id, paused)
    assert approvers.answer(run_id, "alice").accepted
    run: FlowRun = wait_for(run_id, final)
    assert run.state is not None and run.state.is_completed(), run.state
    # What production serves: the tagged commit's version, from its candidate's digests.
    assert served(production_url(run)) == "v1"
    assert serving(tagged.service) == tagged.older.images
    record = tagged.service.releases()[0]
    assert (record.outcome, record.triggered_by) == ("success", "github:releaser")
    assert record.candidate_id == tagged.older.candidate_id != tagged.newer.candidate_id
    assert record.commit_sha == tagged.older.sha
    assert record.images == tagged.older.images
    [(deployment, statuses)] = production_deployments(session_github, tagged.service)
    assert deployment["ref"] == tagged.older.sha
    assert [s["state"] for s in statuses] == ["in_progress", "success"]


def test_a_release_of_a_tag_whose_commit_has_no_candidate_is_refused_and_deploys_nothing(
    tagged: Tagged, session_github: FakeGitHub
) -> None:
    before = production_as_seen(tagged, session_github)
    run_id = release_published(tagged, UNMERGED_TAG)
    run = wait_for(run_id, settled)
    assert run.state is not None and run.state.is_failed(), run.state
    [row] = summary_rows(run_id)  # no provenance, no gate, no deploy
    assert (row["stage"], row["status"]) == ("candidate", "failed")
    slug = tagged.service.slug
    assert row["detail"] == (
        f"no release candidate of tag {UNMERGED_TAG!r} (commit {tagged.unmerged[:12]}) "
        f"recorded for {slug}: nothing deployed"
    )
    # Production, the release records and GitHub's deployments are as they were.
    assert production_as_seen(tagged, session_github) == before
