"""Signed provenance through the real pipelines: a merge attests what it pushed, a release
verifies it before the approval gate, and a candidate the registry cannot vouch for is refused.

One merge run of the sample service serves every test of the module (they are slow).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.context import FlowRunContext
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from clients.oci_artifacts import ATTESTATION_SUFFIX, SBOM_SUFFIX, attached_layers
from clients.registry import RegistryClient
from core.links import flow_run_url
from deployments.stack import Stack
from flows.deploy.stage import lock_name
from flows.pipelines.stages import PipelineSummary
from flows.records.store import ReleaseCandidate, candidate_key, list_candidates
from flows.supply.attest import attest_image
from flows.supply.keys import SigningKey, SupplySettings, TrustedKeys
from flows.supply.provenance import BuildFacts
from flows.supply.verify import Expected, verify_release
from tests.fakes.github_api import FakeGitHub
from tests.flows.pipelines.approvers import Approvers
from tests.flows.pipelines.test_release_pipeline import (
    Service,
    final,
    production_deployments,
    summary_rows,
    wait_for,
)
from tests.plugins.gitrepo import GitRepo

pytestmark = [pytest.mark.slow, pytest.mark.engine]
# Prefect's events for a global concurrency limit's slot: the deploy lock taken and given back.
LOCK_ACQUIRED = "prefect.concurrency-limit.acquired"
LOCK_RELEASED = "prefect.concurrency-limit.released"


@dataclass(frozen=True)
class Merged:
    service: Service
    summary: PipelineSummary
    registry: RegistryClient

    @property
    def sha(self) -> str:
        return self.summary.context.sha

    @property
    def pinned(self) -> str:
        ref: str = self.summary.data["images"]["web"]
        return ref

    @property
    def path(self) -> str:
        """The image's repository path in the registry."""
        return self.pinned.partition("@")[0].split("/", 1)[1]

    def variant(self, label: str) -> str:
        """A digest the merge never attested: the image's manifest with one annotation more."""
        digest = self.pinned.partition("@")[2]
        manifest = json.loads(self.registry.get_manifest(self.path, digest).content)
        manifest.setdefault("annotations", {})["test.variant"] = label
        content = json.dumps(manifest).encode()
        return self.registry.put_manifest(self.path, label, content, manifest["mediaType"])


@pytest.fixture(scope="module")
def approvers(tmp_path_factory: pytest.TempPathFactory) -> Approvers:
    return Approvers(tmp_path_factory.mktemp("provenance-approver-keys"))


@pytest.fixture(autouse=True)
def policy(local_stack: Stack, approvers: Approvers) -> None:
    """The worker's release policy file: alice may approve (other modules write their own)."""
    approvers.write_policy(local_stack.settings, "alice", approval_timeout=600)


@pytest.fixture(scope="module")
def merged(local_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Merged]:
    suffix = uuid.uuid4().hex[:6]
    repo = GitRepo(tmp_path_factory.mktemp("provenance") / f"prov-{suffix}")
    service = Service(repo, f"acme/prov-{suffix}")
    summary = service.merge("v1")
    yield Merged(service, summary, RegistryClient(local_stack.settings.registry_address))


def test_a_merge_attaches_an_sbom_and_signed_provenance_to_each_pushed_digest(
    merged: Merged, local_stack: Stack
) -> None:
    summary = merged.summary
    stages = {s.name: s for s in summary.stages}
    names = [s.name for s in summary.stages]
    assert names.index("push") < names.index("attest") < names.index("deploy-staging")
    assert stages["attest"].status.value == "passed", stages["attest"]
    image, _, digest = merged.pinned.partition("@")
    # The stack's own key, made once in the state folder (0600) and trusted by the stack.
    state = local_stack.settings.state_dir
    key_file = SupplySettings().key_path(local_stack.settings)
    assert key_file.parent == state and (key_file.stat().st_mode & 0o777) == 0o600
    trusted = TrustedKeys.configured(stack=local_stack.settings)
    assert len(trusted) >= 1
    result = verify_release(
        image,
        digest,
        Expected(commit=merged.sha, repository=merged.service.name),
        registry=merged.registry,
        trusted=trusted,
        # The test stack has no scanner: the signed verdict says so, and only allowing
        # unscanned images accepts it.
        allow_unscanned=True,
    )
    assert result.ok, result.checks
    assert next(c for c in result.checks if c.name == "scan").detail.startswith("scan skipped")
    provenance = result.provenance
    assert provenance is not None
    assert provenance.subjects == ((image, digest),)
    assert provenance.repository == merged.service.name
    assert provenance.commit == merged.sha
    assert provenance.scan_verdict == "skipped", "the test stack has no Snyk token"
    assert provenance.flow_run_url == flow_run_url(provenance.flow_run_id)
    assert provenance.flow_run_url and provenance.flow_run_id in provenance.flow_run_url
    # cosign's layout: sha256-HEX.sbom and sha256-HEX.att next to the image.
    assert attached_layers(merged.registry, merged.path, digest, SBOM_SUFFIX)
    assert attached_layers(merged.registry, merged.path, digest, ATTESTATION_SUFFIX)
    hexdigest = digest.removeprefix("sha256:")
    assert summary.data["attestations"] == {
        "web": {
            "sbom": f"{image}:sha256-{hexdigest}.sbom",
            "provenance": f"{image}:sha256-{hexdigest}.att",
        }
    }
    # The merge run's report links both, one reference per line.
    report = merge_report(provenance.flow_run_id)
    assert f"`{image}:sha256-{hexdigest}.sbom`" in report
    assert f"`{image}:sha256-{hexdigest}.att`" in report


def merge_report(run_id: str) -> str:
    async def read() -> str:
        async with get_client() as client:
            [artifact] = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]),
                    key=ArtifactFilterKey(any_=["merge-report"]),
                )
            )
        return str(artifact.data)

    return asyncio.run(read())


def forge_candidate(merged: Merged, images: dict[str, str], commit: str | None = None) -> str:
    """A candidate written straight through the Prefect API, claiming the real merge run: the
    cheap guards of the record (pinned digests, written by a completed merge run) all pass."""
    candidate = ReleaseCandidate(
        id=f"rc-forged-{uuid.uuid4().hex[:6]}",
        repository=str(merged.service.repo.path),
        repository_slug=merged.service.slug,
        repository_name=merged.service.name,
        repository_full_name=merged.service.name,
        commit_sha=commit or merged.sha,
        images=images,
        flow_run_id=merge_run_id(merged),
        commit_author="test@example.invalid",
    )

    async def write() -> None:
        async with get_client() as client:
            await client.create_artifact(
                ArtifactCreate(
                    key=candidate_key(candidate.repository_slug),
                    type="table",
                    data=json.dumps(
                        [{"candidate": candidate.id, "record": candidate.model_dump_json()}]
                    ),
                    flow_run_id=uuid.UUID(candidate.flow_run_id),
                )
            )

    assert FlowRunContext.get() is None
    asyncio.run(write())
    return candidate.id


def merge_run_id(merged: Merged) -> str:
    """The completed merge run that recorded the real candidate."""
    wanted = merged.summary.data["release_candidate"]
    [real] = [c for c in asyncio.run(list_candidates(merged.service.slug)) if c.id == wanted]
    return real.flow_run_id


def refused(merged: Merged, candidate_id: str) -> str:
    """Release ``candidate_id``: the run must end before the gate, recorded; why it was refused."""
    before = len(merged.service.releases())
    run_id = merged.service.start_release(candidate_id=candidate_id)
    run = wait_for(run_id, final, timeout=300)
    assert run.state is not None and run.state.is_failed(), run.state
    [row] = summary_rows(run_id)  # no approval stage: it never reached the gate
    assert (row["stage"], row["status"]) == ("provenance", "failed")
    assert "refused before the approval gate" in row["detail"]
    releases = merged.service.releases()
    assert len(releases) == before + 1
    record = releases[0]
    assert (record.candidate_id, record.outcome) == (candidate_id, "failed")
    detail: str = record.detail
    assert detail.startswith("refused before the approval gate: web: check ")
    assert detail.endswith("; nothing deployed")
    return detail


def test_releases_the_registry_cannot_vouch_for_are_refused_before_the_gate(
    merged: Merged, session_github: FakeGitHub
) -> None:
    image = merged.pinned.partition("@")[0]
    # 1. A digest the merge never attested: no provenance at all.
    bare = merged.variant("no-provenance")
    detail = refused(merged, forge_candidate(merged, {"web": f"{image}@{bare}"}))
    assert "check provenance failed: no provenance attached" in detail
    # 2. A digest whose provenance is right in every claim but signed by a key nobody trusts.
    other = merged.variant("other-key")
    facts = BuildFacts(
        image=image,
        digest=other,
        repository=merged.service.name,
        repository_id=None,
        commit=merged.sha,
        flow_run_id=merge_run_id(merged),
        flow_run_url=None,
        scan_verdict="passed",
    )
    attest_image(facts, merged.registry, key=SigningKey.generate(), sbom=b"{}")
    detail = refused(merged, forge_candidate(merged, {"web": f"{image}@{other}"}))
    assert "check signature failed" in detail
    # 3. A real, attested digest, in a candidate claiming another commit of the repository.
    other_commit = merged.service.repo.commit({"NOTES": "not merged\n"}, "never merged")
    forged = forge_candidate(merged, {"web": merged.pinned}, commit=other_commit)
    detail = refused(merged, forged)
    assert f"check commit failed: built from {merged.sha}; expected {other_commit}" in detail
    # Nothing reached production for this repository.
    assert production_deployments(session_github, merged.service) == []


def test_an_attested_candidate_verifies_before_the_gate_and_deploys(
    merged: Merged, approvers: Approvers
) -> None:
    run_id = merged.service.start_release(candidate_id=merged.summary.data["release_candidate"])
    wait_for(run_id, lambda run: run.state is not None and run.state.is_paused())
    assert approvers.answer(run_id, "alice").accepted
    run = wait_for(run_id, final)
    assert run.state is not None and run.state.is_completed(), run.state
    rows = summary_rows(run_id)
    assert [r["stage"] for r in rows[:4]] == [
        "provenance",
        "approval",
        "deploy-production",
        "smoke",
    ]
    assert rows[0]["status"] == "passed"
    assert merged.service.releases()[0].outcome == "success"


def lock_events(name: str) -> dict[str, datetime]:
    """When the concurrency limit ``name`` was acquired and released (Prefect's own events),
    once both have reached the server."""

    async def read() -> dict[str, datetime]:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
            page = await client.read_events(
                EventFilter(
                    event=EventNameFilter(name=[LOCK_ACQUIRED, LOCK_RELEASED]),
                    resource=EventResourceFilter(id=[f"prefect.concurrency-limit.{limit.id}"]),
                ),
                limit=50,  # the server's largest page
            )
        return {event.event: event.occurred for event in page.events}

    deadline = time.monotonic() + 60
    seen = asyncio.run(read())
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(1)
        seen = asyncio.run(read())
    assert len(seen) == 2, seen
    return seen


def rows(data: Any) -> list[dict[str, Any]]:
    """A table artifact's rows, whether the client hands them over parsed or as JSON."""
    parsed = json.loads(data) if isinstance(data, str) else data
    return [row for row in parsed if isinstance(row, dict)] if isinstance(parsed, list) else []


def test_the_merge_holds_the_staging_lock_only_for_deploy_and_e2e(merged: Merged) -> None:
    run_id = merge_run_id(merged)

    async def read() -> tuple[dict[str, Any], datetime]:
        async with get_client() as client:
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))
            )
            records = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]),
                    key=ArtifactFilterKey(any_=[candidate_key(merged.service.slug)]),
                )
            )
        # Other tests of this module forge records that name this run too: the merge's own is
        # the one holding the candidate id its summary reports.
        ours = merged.summary.data["release_candidate"]
        [candidate] = [r for r in records if ours in {row.get("candidate") for row in rows(r.data)}]
        assert candidate.created is not None
        return {t.name: t for t in tasks}, candidate.created

    tasks, recorded = asyncio.run(read())
    lock = lock_events(lock_name(merged.service.slug, "staging"))
    taken, released = lock[LOCK_ACQUIRED], lock[LOCK_RELEASED]
    # Taken only once the images are built, pushed and attested, before the staging deploy...
    for stage in ("build", "push", "attest"):
        assert tasks[stage].end_time is not None and tasks[stage].end_time <= taken, stage
    assert tasks["deploy-staging"].start_time is not None
    assert taken <= tasks["deploy-staging"].start_time
    # ...and given back once E2E has ended, before the candidate is recorded.
    assert tasks["e2e"].end_time is not None and tasks["e2e"].end_time <= released
    assert released <= recorded
