"""Merge to production through the real `gantry` command: `run merge`, `release`, `reject`,
`approve`, each step's exit code and JSON checked as a script would read them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun

from deployments.stack import Stack
from flows.pipelines.stages import PipelineSummary
from flows.records.store import all_releases
from tests.flows.pipelines.approvers import Approvers
from tests.flows.pipelines.service_repo import commit_version
from tests.flows.pipelines.test_release_pipeline import summary_rows
from tests.plugins.gitrepo import GitRepo
from tests.plugins.stack import as_json, gantry

pytestmark = [pytest.mark.slow, pytest.mark.engine]


def read_run(run_id: str) -> FlowRun:
    async def read() -> FlowRun:
        async with get_client() as client:
            return await client.read_flow_run(uuid.UUID(run_id))

    return asyncio.run(read())


def final_run(run_id: str, timeout: float = 300) -> FlowRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = read_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} stuck in {read_run(run_id).state}")


def served(url: str) -> str:
    version: str = httpx.get(f"{url}/version", timeout=10).json()["version"]
    return version


def production_refs(stack: Stack) -> set[str]:
    """The image references the stack's live production containers were started from."""
    with closing(docker.DockerClient(base_url=stack.engine.docker_host, timeout=60)) as client:
        containers = client.containers.list(
            filters={"label": ["dev.gantry.environment=production", "dev.gantry.role=live"]}
        )
        return {c.labels["dev.gantry.ref"] for c in containers}


def release_no_wait(stack: Stack, repo: GitRepo) -> dict[str, Any]:
    """`gantry release --no-wait --json`: it returns once the run waits at its approval gate."""
    result = gantry(stack, "release", "--repo", str(repo.path), "--no-wait", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = as_json(result)
    assert report["pipeline"] == "release"
    assert (report["paused"], report["passed"], report["state"]) == (True, False, "Paused")
    assert report["url"].endswith(f"/runs/flow-run/{report['flow_run_id']}")
    assert isinstance(report["stages"], list)
    return report


def answer(
    stack: Stack, decision: str, run_id: str, key: Path, *reason: str
) -> tuple[int, dict[str, Any]]:
    result = gantry(stack, decision, run_id, *reason, "--key", str(key), "--json")
    return result.returncode, as_json(result)


@pytest.mark.timeout(1500)
def test_run_merge_then_release_reject_and_approve_through_the_cli(
    local_stack: Stack, make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    approvers = Approvers(tmp_path / "keys")
    approvers.write_policy(local_stack.settings, "alice", approval_timeout=600)
    repo = make_repo(f"cli-rel-{uuid.uuid4().hex[:6]}")
    sha = commit_version(repo, "v1")

    # -- run merge --json: the digests, their attestations, staging and the candidate --------
    merged = gantry(local_stack, "run", "merge", "--repo", str(repo.path), "--sha", sha, "--json")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    report = as_json(merged)
    assert (report["pipeline"], report["state"], report["passed"]) == ("merge", "Completed", True)
    assert report["paused"] is False
    stages = {s["name"]: s["status"] for s in report["stages"]}
    for stage in ("lint", "build", "push", "attest", "deploy-staging", "e2e"):
        assert stages[stage] == "passed", report["stages"]
    data = report["data"]
    image: str = data["images"]["web"]
    assert image.startswith(f"127.0.0.1:{local_stack.settings.registry_port}/")
    digest = image.rsplit("@", 1)[1]
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert set(data["attestations"]) == {"web"}
    assert served(data["staging_url"]) == "v1"
    candidate = data["release_candidate"]
    assert candidate.startswith(f"rc-{sha[:12]}-")

    # -- release --no-wait, then reject with a reason: cancelled, nothing deployed ------------
    first = release_no_wait(local_stack, repo)
    code, rejected = answer(
        local_stack, "reject", first["flow_run_id"], approvers.keys["alice"], "--reason", "freeze"
    )
    assert code == 0, rejected
    assert rejected["flow_run_id"] == first["flow_run_id"]
    assert (rejected["accepted"], rejected["decision"]) == (True, "reject")
    assert rejected["candidate"] == candidate
    run = final_run(first["flow_run_id"])
    assert run.state is not None and run.state.is_cancelled(), run.state
    assert "rejected by alice@example.invalid: freeze" in (run.state.message or "")
    assert image not in production_refs(local_stack)
    # The run keeps its summary: the verified provenance, then the gate cancelled and why.
    verified, gate = summary_rows(first["flow_run_id"])
    assert (verified["stage"], verified["status"]) == ("provenance", "passed")
    assert (gate["stage"], gate["status"]) == ("approval", "cancelled")
    assert "rejected by alice@example.invalid" in gate["detail"]

    # -- release again: a key off the policy is refused (exit 1), alice's approves ------------
    second = release_no_wait(local_stack, repo)
    run_id = second["flow_run_id"]
    assert run_id != first["flow_run_id"]
    code, refused = answer(local_stack, "approve", run_id, approvers.keys["mallory"])
    assert code == 1, refused
    assert refused["accepted"] is False and "bad_signature" in refused["message"]
    assert read_run(run_id).state.is_paused(), "a refused answer leaves the gate waiting"  # type: ignore[union-attr]
    code, approved = answer(local_stack, "approve", run_id, approvers.keys["alice"])
    assert code == 0, approved
    assert (approved["accepted"], approved["decision"]) == (True, "approve")
    run = final_run(run_id)
    assert run.state is not None and run.state.is_completed(), run.state
    # Production runs the very digest the merge pushed and staging verified, and serves it.
    assert image in production_refs(local_stack)
    records = [r for r in asyncio.run(all_releases()) if r.candidate_id == candidate]
    assert [(r.outcome, r.flow_run_id) for r in records] == [
        ("success", run_id),
        ("rejected", first["flow_run_id"]),
    ]
    assert records[0].images == {"web": image}
    assert records[0].approved_by == "alice@example.invalid"
    assert records[0].triggered_by == "gantry release"
    assert records[1].decision_comment == "freeze"
    assert served(production_url(run)) == "v1"


def production_url(run: FlowRun) -> str:
    assert run.state is not None
    summary = asyncio.run(run.state.aresult(raise_on_failure=False))
    assert isinstance(summary, PipelineSummary)
    url: str = summary.data["production_url"]
    return url
