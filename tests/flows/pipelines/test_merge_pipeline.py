"""The merge pipeline for real: real engine, registry, containers, Prefect server and worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment

from clients.registry import RegistryClient
from core.identity import name_slug
from core.settings import MERGE_DEPLOYMENT
from deployments.stack import Stack
from flows.pipelines.merge import merge_pipeline
from flows.pipelines.stages import PipelineSummary
from flows.records.store import list_candidates
from tests.flows.pipelines.service_repo import commit_version
from tests.plugins.gitrepo import GitRepo

pytestmark = [pytest.mark.slow, pytest.mark.engine]


def merge(repo: GitRepo, sha: str, name: str) -> tuple[Any, PipelineSummary]:
    state = asyncio.run(
        merge_pipeline(str(repo.path), sha, repository_name=name, return_state=True)
    )
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, PipelineSummary)
    return state, summary


def served_version(url: str) -> str:
    version: str = httpx.get(f"{url}/version", timeout=10).json()["version"]
    return version


def stage(summary: PipelineSummary, name: str) -> Any:
    return next(s for s in summary.stages if s.name == name)


@pytest.fixture
def service(make_repo: Callable[[str], GitRepo]) -> tuple[GitRepo, str, str]:
    suffix = uuid.uuid4().hex[:6]
    name = f"acme/svc-{suffix}"
    return make_repo(f"svc-{suffix}"), name, name_slug(name)


def test_a_merge_pushes_by_digest_deploys_staging_and_records_a_candidate(
    local_stack: Stack, service: tuple[GitRepo, str, str]
) -> None:
    repo, name, slug = service
    sha = commit_version(repo, "v1")
    state, summary = merge(repo, sha, name)
    assert state.is_completed(), summary.stages
    ref = summary.data["images"]["web"]
    repository, _, digest = ref.partition("@")
    assert digest.startswith("sha256:")
    # The digest is the registry's own answer for the pushed tag.
    registry = RegistryClient(local_stack.settings.registry_address)
    path = repository.split("/", 1)[1]
    assert registry.manifest_digest(path, sha) == digest
    url = summary.data["staging_url"]
    assert served_version(url) == "v1"
    candidates = asyncio.run(list_candidates(slug))
    assert candidates[0].id == summary.data["release_candidate"]
    assert candidates[0].images == {"web": ref}
    assert candidates[0].commit_sha == sha


def test_a_version_that_never_gets_healthy_leaves_staging_on_the_old_one(
    local_stack: Stack, service: tuple[GitRepo, str, str]
) -> None:
    repo, name, _ = service
    state, first = merge(repo, commit_version(repo, "v1"), name)
    assert state.is_completed()
    url = first.data["staging_url"]
    state, summary = merge(repo, commit_version(repo, "broken-v2"), name)
    assert state.is_failed()
    deploy = stage(summary, "deploy-staging")
    assert deploy.status.value == "failed"
    assert "the previous version still serves" in deploy.detail
    assert stage(summary, "e2e").status.value == "skipped"
    assert served_version(url) == "v1"
    assert summary.data.get("release_candidate") is None


def test_an_e2e_failure_records_no_candidate(
    local_stack: Stack, service: tuple[GitRepo, str, str]
) -> None:
    repo, name, slug = service
    sha = commit_version(repo, "v3", e2e_fails=True)
    state, summary = merge(repo, sha, name)
    assert state.is_failed()
    assert state.message == "failed stages: e2e"
    assert summary.data["release_candidate"] is None
    # Staging keeps the new version; it simply is not a release candidate.
    assert served_version(summary.data["staging_url"]) == "v3"
    assert all(c.commit_sha != sha for c in asyncio.run(list_candidates(slug)))


def test_two_merges_at_once_deploy_one_after_the_other(
    local_stack: Stack, service: tuple[GitRepo, str, str]
) -> None:
    repo, name, _ = service
    first = commit_version(repo, "v10")
    second = commit_version(repo, "v11")

    async def both() -> list[Any]:
        runs = await asyncio.gather(
            *(
                run_deployment(
                    MERGE_DEPLOYMENT,
                    parameters={"repository": str(repo.path), "sha": sha, "repository_name": name},
                    timeout=600,
                )
                for sha in (first, second)
            )
        )
        windows = []
        async with get_client() as client:
            for run in runs:
                assert run.state is not None and run.state.is_completed(), run.state
                tasks = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
                )
                by_name = {t.name: t for t in tasks}
                windows.append((by_name["deploy-staging"].start_time, by_name["e2e"].end_time))
        return windows

    (_, a_end), (b_start, _) = sorted(asyncio.run(both()))
    # The second deploy began only after the first one's E2E had finished.
    assert a_end <= b_start
