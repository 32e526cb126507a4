"""Runs named by identity: cloned from the Git host, stale pushes deploy nothing, tags pick
exactly their commit's candidate. Real Prefect server, real git, the GitHub stand-in."""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import pytest

from core.identity import RepositoryIdentity
from deployments.stack import Stack
from flows.pipelines.candidates import release_candidate
from flows.pipelines.merge import merge_pipeline
from flows.pipelines.stages import PipelineSummary
from flows.records.store import ReleaseCandidate, record_candidate
from tests.fakes.github_api import FakeGitHub
from tests.plugins.gitrepo import GitRepo, gantry_toml

pytestmark = pytest.mark.slow
PY = sys.executable


def hosted(stack: Stack, full_name: str) -> GitRepo:
    """A repository on the test stack's Git host (GANTRY_GIT_BASE_URL), as owner/name."""
    return GitRepo(stack.settings.state_dir / "git" / full_name)


def merge(name: str, repository_id: int, sha: str) -> tuple[Any, PipelineSummary]:
    async def run() -> Any:
        return await merge_pipeline(
            None,
            sha,
            ref="main",
            repository_name=name,
            repository_id=repository_id,
            return_state=True,
        )

    state = asyncio.run(run())
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, PipelineSummary)
    return state, summary


def details(summary: PipelineSummary) -> dict[str, str]:
    return {s.name: s.detail for s in summary.stages}


def test_a_push_that_is_no_longer_the_branch_head_deploys_nothing(
    local_stack: Stack, session_github: FakeGitHub
) -> None:
    name = f"acme/stale-{uuid.uuid4().hex[:6]}"
    repo = hosted(local_stack, name)
    old = repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})
    new = repo.commit({"README": "newer"})
    session_github.set_branch(name, "main", new)
    state, summary = merge(name, 9001, old)
    assert state.is_completed(), summary.stages
    for stage in ("push", "deploy-staging", "e2e"):
        assert "no longer the head of main" in details(summary)[stage]
    assert summary.data["release_candidate"] is None
    # The verification itself ran, on the built URL's checkout of the old commit.
    assert details(summary)["lint"] == "" and summary.context.sha == old
    assert summary.context.repository.startswith("file://")


def test_the_branch_head_goes_on_past_the_check(
    local_stack: Stack, session_github: FakeGitHub
) -> None:
    name = f"acme/head-{uuid.uuid4().hex[:6]}"
    repo = hosted(local_stack, name)
    head = repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})
    session_github.set_branch(name, "main", head)
    state, summary = merge(name, 9002, head)
    assert state.is_completed(), summary.stages
    # No [[images]]: it stops for that reason, not for staleness.
    assert details(summary)["push"] == "no images were built"


def candidate(identity: RepositoryIdentity, sha: str) -> ReleaseCandidate:
    return ReleaseCandidate(
        id=f"rc-{sha[:8]}-{uuid.uuid4().hex[:4]}",
        repository="(recorded by a merge run)",
        repository_slug=identity.slug,
        repository_name=identity.full_name,
        repository_full_name=identity.full_name,
        repository_id=identity.id,
        commit_sha=sha,
        images={"web": "registry/web@sha256:" + "c" * 64},
        flow_run_id=str(uuid.uuid4()),
    )


def test_a_release_tag_finds_exactly_its_commits_candidate_or_none(local_stack: Stack) -> None:
    name = f"acme/tagged-{uuid.uuid4().hex[:6]}"
    identity = RepositoryIdentity(full_name=name, id=9003)
    repo = hosted(local_stack, name)
    older = repo.commit({"app.txt": "v1"})
    repo.git("tag", "-a", "v1.0.0", "-m", "release v1")
    newer = repo.commit({"app.txt": "v2"})
    untested = repo.commit({"app.txt": "v3"})
    repo.git("tag", "v3.0.0")
    tagged, newest = candidate(identity, older), candidate(identity, newer)

    async def scenario() -> list[tuple[ReleaseCandidate | None, str]]:
        await record_candidate(tagged)
        await record_candidate(newest)
        return [
            await release_candidate(identity, None, None, "v1.0.0"),
            await release_candidate(identity, None, None, "v3.0.0"),
            await release_candidate(identity, None, None, "v9.9.9"),
        ]

    (first, _), (none, why), (missing, reason) = asyncio.run(scenario())
    assert first is not None and first.id == tagged.id  # not the newest candidate
    assert none is None and untested[:12] in why
    assert missing is None and "could not be resolved" in reason


def test_a_tag_on_github_is_resolved_through_its_api_and_peeled(
    local_stack: Stack, session_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GANTRY_GIT_BASE_URL", "https://github.com/")
    name = f"acme/remote-{uuid.uuid4().hex[:6]}"
    identity = RepositoryIdentity(full_name=name, id=9004)
    sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    session_github.set_tag(name, "v2.0.0", sha, annotated=True)
    wanted = candidate(identity, sha)

    async def scenario() -> ReleaseCandidate | None:
        await record_candidate(candidate(identity, "9" * 40))
        await record_candidate(wanted)
        await record_candidate(candidate(identity, "8" * 40))
        found, _ = await release_candidate(identity, None, None, "v2.0.0")
        return found

    found = asyncio.run(scenario())
    assert found is not None and found.id == wanted.id
    assert session_github.requests_to(f"/repos/{name}/git/ref/tags/v2.0.0", "GET")
