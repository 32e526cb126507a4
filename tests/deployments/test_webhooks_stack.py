"""With the local stack up, a signed GitHub delivery starts exactly one pipeline run."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun

from core.ports import free_port
from core.settings import StackSettings
from deployments.stack import Stack
from tests.fakes.github_api import FakeGitHub
from tests.plugins.deadlines import pids_with, wait_for
from tests.plugins.gitrepo import GitRepo, gantry_toml
from tests.plugins.stack import WEBHOOK_SECRET

pytestmark = pytest.mark.slow
PY = sys.executable


def post(stack: Stack, event: str, payload: dict[str, Any], delivery: str, secret: str) -> int:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    response = httpx.post(
        stack.settings.webhook_url,
        content=body,
        headers={
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature,
            "Content-Type": "application/json",
        },
        timeout=10,
    )
    return response.status_code


def runs_for(delivery: str) -> list[FlowRun]:
    return runs_tagged(f"delivery:{delivery}")


def runs_tagged(tag: str) -> list[FlowRun]:
    async def read() -> list[FlowRun]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
            )

    return asyncio.run(read())


def wait_final(run_id: uuid.UUID, timeout: float = 180) -> FlowRun:
    async def read() -> FlowRun:
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = asyncio.run(read())
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish")


def hosted(stack: Stack, full_name: str) -> GitRepo:
    """A repository on the test stack's Git host (GANTRY_GIT_BASE_URL), as owner/name."""
    return GitRepo(stack.settings.state_dir / "git" / full_name)


def pr_payload(
    full_name: str, sha: str, number: int, branch: str, clone_url: str
) -> dict[str, Any]:
    return {
        "action": "opened",
        "number": number,
        # The clone URL is GitHub's, and never used: runs clone from the Git host.
        "repository": {"full_name": full_name, "id": 5150, "clone_url": clone_url},
        "pull_request": {
            "draft": False,
            "head": {"ref": branch, "sha": sha, "repo": {"full_name": full_name}},
            "base": {"ref": "main", "sha": sha, "repo": {"full_name": full_name}},
        },
    }


def test_a_signed_pull_request_starts_one_run_that_reports_commit_statuses(
    local_stack: Stack, session_github: FakeGitHub, make_repo: Callable[[str], GitRepo]
) -> None:
    name = f"acme/hooked-{uuid.uuid4().hex[:6]}"
    repo = hosted(local_stack, name)
    sha = repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "print('ok')"])})
    # The payload's clone URL names another repository holding a failing check at the same
    # SHA's place: if it were cloned, the run would fail or not find the commit.
    decoy = make_repo("decoy")
    decoy.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "raise SystemExit(3)"])})
    delivery = str(uuid.uuid4())
    branch = 'zzz";echo${IFS}"hello";#$(id)'
    payload = pr_payload(name, sha, 42, branch, decoy.path.as_uri())
    assert post(local_stack, "pull_request", payload, delivery, WEBHOOK_SECRET) == 202
    # The same delivery again (GitHub redelivers with the same id) starts nothing more.
    assert post(local_stack, "pull_request", payload, delivery, WEBHOOK_SECRET) in (200, 202)
    deadline = time.monotonic() + 60
    while not runs_for(delivery) and time.monotonic() < deadline:
        time.sleep(0.3)
    runs = runs_for(delivery)
    assert len(runs) == 1
    assert runs[0].parameters["sha"] == sha
    assert runs[0].parameters["pr_number"] == 42
    assert runs[0].parameters["head_ref"] == branch  # inert data, exactly as sent
    assert runs[0].parameters["repository"] is None  # nothing of the payload's clone URL
    assert runs[0].parameters["repository_id"] == 5150
    finished = wait_final(runs[0].id)
    assert finished.state is not None and finished.state.is_completed()
    statuses = [r for r in session_github.requests_to(f"/statuses/{sha}") if r.method == "POST"]
    contexts = {(r.json["context"], r.json["state"]) for r in statuses}
    assert ("gantry/lint", "pending") in contexts
    assert ("gantry/lint", "success") in contexts
    assert all(r.headers["authorization"] == f"Bearer {session_github.token}" for r in statuses)
    time.sleep(2)
    assert len(runs_for(delivery)) == 1
    # The receiver only recorded the delivery; the stack's dispatcher process made its run.
    dispatched = f"dispatched as flow run {runs[0].name} ({runs[0].id})"
    assert dispatched in local_stack.dispatcher.log_file.read_text(errors="replace")
    assert "dispatched as flow run" not in local_stack.receiver.log_file.read_text(errors="replace")
    # No secret in any log line: the run's logs in Prefect, the worker's and the receiver's.
    lines = run_logs(runs[0].id)
    lines.append(local_stack.worker.log_file.read_text(errors="replace"))
    lines.append(local_stack.receiver.log_file.read_text(errors="replace"))
    lines.append(local_stack.dispatcher.log_file.read_text(errors="replace"))
    everything = "\n".join(lines)
    assert "lint" in everything  # the logs were really read
    for secret in (session_github.token, WEBHOOK_SECRET, local_stack.webhook_secret()):
        assert secret not in everything
    assert "sha256=" not in everything


def run_states(run_id: uuid.UUID) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_run_states(run_id)

    return asyncio.run(read())


def run_logs(run_id: uuid.UUID) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200
            )
        return [log.message for log in logs]

    return asyncio.run(read())


def test_a_newer_push_to_a_pull_request_stops_the_older_runs_steps(local_stack: Stack) -> None:
    name = f"acme/superseded-{uuid.uuid4().hex[:6]}"
    repo = hosted(local_stack, name)
    # The marker rides in the step's argv, so its process can be found on this machine.
    marker = f"superseded-{uuid.uuid4().hex}"
    hang = [PY, "-c", "import time; time.sleep(600)", marker]
    old_sha = repo.commit({"gantry.toml": gantry_toml(lint=hang)})
    payload = pr_payload(name, old_sha, 9, "feature", "https://github.com/acme/x.git")
    assert post(local_stack, "pull_request", payload, str(uuid.uuid4()), WEBHOOK_SECRET) == 202
    wait_for("the first run's lint step to start", lambda: pids_with(marker), 180)

    new_sha = repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "print('ok')"])})
    payload = pr_payload(name, new_sha, 9, "feature", "https://github.com/acme/x.git")
    payload["action"] = "synchronize"
    assert post(local_stack, "pull_request", payload, str(uuid.uuid4()), WEBHOOK_SECRET) == 202

    # The old run's step is gone long before its own 600 s: superseding stopped it.
    wait_for("the superseded run's step to stop", lambda: not pids_with(marker), 90)
    runs = {run.parameters["sha"]: run for run in runs_tagged(f"repo:{name}")}
    assert set(runs) == {old_sha, new_sha}, [(r.name, r.tags) for r in runs.values()]
    old_final = wait_final(runs[old_sha].id)
    assert old_final.state is not None and old_final.state.is_cancelled()
    states = run_states(runs[old_sha].id)
    assert any("superseded by" in (state.message or "") for state in states)
    new_final = wait_final(runs[new_sha].id)
    assert new_final.state is not None and new_final.state.is_completed()


def test_a_bad_signature_starts_nothing(local_stack: Stack) -> None:
    name = f"acme/unsigned-{uuid.uuid4().hex[:6]}"
    sha = hosted(local_stack, name).commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})
    delivery = str(uuid.uuid4())
    payload = pr_payload(name, sha, 7, "feature", "https://github.com/acme/x.git")
    assert post(local_stack, "pull_request", payload, delivery, "wrong-secret-0123456789") == 401
    time.sleep(3)
    assert runs_for(delivery) == []


def test_a_repository_off_the_allowlist_starts_nothing(local_stack: Stack) -> None:
    # The test stack's receiver serves acme/* only.
    name = f"mallory/svc-{uuid.uuid4().hex[:6]}"
    sha = hosted(local_stack, name).commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})
    delivery = str(uuid.uuid4())
    payload = pr_payload(name, sha, 8, "feature", "https://github.com/mallory/x.git")
    assert post(local_stack, "pull_request", payload, delivery, WEBHOOK_SECRET) == 202
    time.sleep(3)
    assert runs_for(delivery) == []


def test_down_stops_the_dispatcher_process(tmp_path: Path) -> None:
    # The dispatcher alone (no Prefect server: it keeps polling an empty store meanwhile).
    settings = StackSettings(home=tmp_path, prefect_port=free_port(), webhook_port=free_port())
    stack = Stack(settings)
    stack.secure_state()
    stack._start_dispatcher()
    pid = stack.dispatcher.pid()
    try:
        assert pid is not None
        assert "webhook-dispatcher" in {part.name for part in stack.status() if part.up}
        report = stack.down()
    finally:
        stack.dispatcher.stop()
    assert "webhook-dispatcher" in report.stopped
    assert not Path(f"/proc/{pid}").exists()
    assert not stack.dispatcher.running()
