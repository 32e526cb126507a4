"""What a merge promises when it cannot check or cannot vouch: one real merge run, named by
identity as a webhook names it, on a worker with no GitHub credentials and no signing key.

Without credentials the head cannot be asked, and the run's log says so; without the key the
``attest`` stage fails, so the pushed images never reach staging and no candidate is recorded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from blocks.github import ENV_APP_ID, ENV_APP_INSTALLATION_ID, ENV_APP_PRIVATE_KEY, ENV_TOKEN
from core.identity import name_slug
from deployments.stack import Stack
from flows.deploy.runtime import deploy_target
from flows.pipelines.merge import merge_pipeline
from flows.pipelines.stages import PipelineSummary
from flows.records.store import list_candidates
from tests.flows.pipelines.service_repo import commit_version
from tests.plugins.gitrepo import GitRepo

pytestmark = [pytest.mark.slow, pytest.mark.engine]


@dataclass(frozen=True)
class Unchecked:
    """The merge run, what the test asked of it, and its summary."""

    name: str
    sha: str
    run_id: uuid.UUID
    summary: PipelineSummary

    @property
    def slug(self) -> str:
        return name_slug(self.name)

    def stage(self, name: str) -> Any:
        return next(s for s in self.summary.stages if s.name == name)


@pytest.fixture(scope="module")
def unchecked(local_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unchecked]:
    name = f"acme/unchecked-{uuid.uuid4().hex[:6]}"
    # The worker's Git host (GANTRY_GIT_BASE_URL): a webhook's run clones owner/name from it.
    repo = GitRepo(local_stack.settings.state_dir / "git" / name)
    sha = commit_version(repo, "v1")
    missing_key = tmp_path_factory.mktemp("no-signing-key") / "provenance-signing.pem"
    with pytest.MonkeyPatch.context() as env:
        for variable in (ENV_TOKEN, ENV_APP_ID, ENV_APP_PRIVATE_KEY, ENV_APP_INSTALLATION_ID):
            env.delenv(variable, raising=False)
        # A configured key that is not there: attest fails, it never mints a key of its own.
        env.setenv("GANTRY_SUPPLY_SIGNING_KEY", str(missing_key))
        pipeline: Any = merge_pipeline  # Prefect's typing cannot say what return_state returns
        state = asyncio.run(
            pipeline(
                None, sha, ref="main", repository_name=name, repository_id=9101, return_state=True
            )
        )
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, PipelineSummary)
    run_id = state.state_details.flow_run_id
    assert run_id is not None
    yield Unchecked(name, sha, run_id, summary)


def run_log(run_id: uuid.UUID, wanted: str, timeout: float = 60) -> list[str]:
    """The run's log lines on the Prefect server, once one contains ``wanted`` (they are
    shipped in batches)."""

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
        return [log.message for log in logs]

    deadline = time.monotonic() + timeout
    lines = asyncio.run(read())
    while not any(wanted in line for line in lines) and time.monotonic() < deadline:
        time.sleep(1)
        lines = asyncio.run(read())
    return lines


def test_without_github_credentials_the_merge_logs_that_the_head_was_not_checked(
    unchecked: Unchecked,
) -> None:
    wanted = f"no GitHub credentials: cannot confirm {unchecked.sha[:12]} is the head of main"
    lines = run_log(unchecked.run_id, wanted)
    assert any(wanted in line for line in lines), lines
    # Unchecked is not refused: the run went on past the head check to push its images.
    assert unchecked.stage("push").status.value == "passed"


def test_a_failed_attest_stage_lets_nothing_reach_staging_and_records_no_candidate(
    unchecked: Unchecked,
) -> None:
    attest = unchecked.stage("attest")
    assert attest.status.value == "failed"
    assert "no signing key at" in attest.detail
    for name in ("deploy-staging", "e2e"):
        stage = unchecked.stage(name)
        assert (stage.status.value, stage.detail) == ("skipped", "attestation failed")
    assert unchecked.summary.data["release_candidate"] is None
    assert unchecked.summary.data["not_a_candidate"] == "attestation failed"
    assert "staging_url" not in unchecked.summary.data
    # Staging runs nothing of this repository; the record holds no candidate of it.
    staging = asyncio.run(_serving(unchecked.slug))
    assert staging == {}
    assert asyncio.run(list_candidates(unchecked.slug)) == []


async def _serving(slug: str) -> dict[str, str]:
    return await (await deploy_target("staging")).current(slug, "staging")
