"""The release's approval gate against forged, misdirected and self-serving answers, for real.

The test stack's worker runs the release; answers are real SSH signatures made with keys made
here; the policy is the file in the stack's state folder the worker reads.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from blocks.observability import DEFAULT_DATADOG_BLOCK, DatadogSettings
from core.release_policy import POLICY_FILE
from deployments.stack import Stack
from tests.fakes.dogstatsd import DogStatsdAgent
from tests.flows.pipelines.approvers import Approvers
from tests.flows.pipelines.test_release_pipeline import (
    Service,
    final,
    paused,
    read_run,
    wait_for,
)
from tests.plugins.gitrepo import GitRepo
from tests.plugins.stack import as_json, gantry

pytestmark = [pytest.mark.slow, pytest.mark.engine]


@pytest.fixture(scope="module")
def approvers(tmp_path_factory: pytest.TempPathFactory) -> Approvers:
    return Approvers(tmp_path_factory.mktemp("approver-keys"))


@pytest.fixture
def service(make_repo: Callable[[str], GitRepo]) -> Service:
    suffix = uuid.uuid4().hex[:6]
    return Service(make_repo(f"gate-{suffix}"), f"acme/gate-{suffix}")


@pytest.fixture
def agent(local_stack: Stack) -> Iterator[DogStatsdAgent]:
    """A DogStatsD agent the worker's flow runs send to, through the saved Datadog block."""
    with DogStatsdAgent() as statsd:

        async def save() -> None:
            block = DatadogSettings(agent_host="127.0.0.1", agent_port=statsd.port)
            await block.save(DEFAULT_DATADOG_BLOCK, overwrite=True)

        async def delete() -> None:
            await DatadogSettings.adelete(DEFAULT_DATADOG_BLOCK)

        asyncio.run(save())
        try:
            yield statsd
        finally:
            asyncio.run(delete())


def refusals(agent: DogStatsdAgent, repository: str) -> list[str]:
    return [
        d.tag("reason") or ""
        for d in agent.datagrams()
        if d.name == "gantry.release.approval_refused" and d.tag("repository") == repository
    ]


def test_unsigned_foreign_misdirected_and_self_approvals_are_refused_and_counted(
    service: Service, approvers: Approvers, local_stack: Stack, agent: DogStatsdAgent
) -> None:
    # alice and the commit's author are allowed signers; mallory has a key but is not listed.
    approvers.write_policy(local_stack.settings, "alice", "author", approval_timeout=60)
    service.merge("v1")
    run_id = service.start_release()
    wait_for(run_id, paused)
    right = approvers.statement(run_id)
    attempts = {
        "unsigned": (right, None),
        "not on the list": (right, "mallory"),
        "another run": (right.model_copy(update={"run": str(uuid.uuid4())}), "alice"),
        "another candidate": (right.model_copy(update={"candidate": "rc-other"}), "alice"),
        "self-approval": (right, "author"),
    }
    for what, (statement, signer) in attempts.items():
        outcome = approvers.send(run_id, statement, signer)
        assert not outcome.accepted, what
        assert "answer refused" in outcome.message, (what, outcome.message)
        assert paused(read_run(run_id)), f"{what}: the release must keep waiting"
    # Nobody approved: the release times out with nothing deployed.
    run = wait_for(run_id, final, timeout=180)
    assert run.state is not None and run.state.is_cancelled(), run.state
    assert "no approval within 60 s" in (run.state.message or "")
    assert service.releases()[0].outcome == "timed_out"
    # Each refusal was counted with why (the last datagrams may still be in flight).
    expected = ["unsigned", "bad_signature", "other_run", "other_candidate", "self_approval"]
    deadline = time.monotonic() + 10
    while sorted(refusals(agent, service.name)) != sorted(expected):
        assert time.monotonic() < deadline, refusals(agent, service.name)
        time.sleep(0.2)


def test_a_stale_statement_is_refused(
    service: Service, approvers: Approvers, local_stack: Stack
) -> None:
    approvers.write_policy(local_stack.settings, "alice", max_clock_skew=60)
    service.merge("v1")
    run_id = service.start_release()
    wait_for(run_id, paused)
    stale = approvers.statement(run_id, time="2020-01-01T00:00:00Z")
    outcome = approvers.send(run_id, stale, "alice")
    assert not outcome.accepted
    assert "(stale)" in outcome.message
    # The same approver's fresh statement is taken: the refusal was about the time only.
    assert approvers.answer(run_id, "alice").accepted
    run = wait_for(run_id, final)
    assert run.state is not None and run.state.is_completed(), run.state


def test_self_approval_is_taken_when_the_policy_allows_it(
    service: Service, approvers: Approvers, local_stack: Stack
) -> None:
    approvers.write_policy(local_stack.settings, "author", allow_self_approval=True)
    service.merge("v1")
    run_id = service.start_release()
    wait_for(run_id, paused)
    assert approvers.answer(run_id, "author").accepted
    run = wait_for(run_id, final)
    assert run.state is not None and run.state.is_completed(), run.state
    assert service.releases()[0].approved_by == "test@example.invalid"


def test_run_parameters_cannot_skip_the_gate_or_pick_a_policy(
    service: Service, approvers: Approvers, local_stack: Stack
) -> None:
    approvers.write_policy(local_stack.settings, "alice", approval_timeout=600)
    service.merge("v1")
    run_id = service.start_release(skip_approval=True, policy_block="anything-goes")
    # The flow has no such parameters: the run ends before it gets anywhere near production.
    run = wait_for(run_id, lambda r: paused(r) or final(r))
    assert run.state is not None and (run.state.is_crashed() or run.state.is_failed()), run.state
    assert service.releases() == []


def test_a_missing_or_invalid_policy_file_refuses_the_release(
    service: Service, local_stack: Stack
) -> None:
    path = local_stack.settings.state_dir / POLICY_FILE
    path.unlink(missing_ok=True)
    service.merge("v1")
    for content, says in ((None, "no release policy file"), ("approval_timeout = 5\n", "invalid")):
        if content is not None:
            path.write_text(content)
        run = wait_for(service.start_release(), final)
        assert run.state is not None and run.state.is_failed(), run.state
        result = gantry(local_stack, "policy", "show", "--json")
        assert result.returncode == 1, result.stdout + result.stderr
        shown = as_json(result)
        assert shown["valid"] is False and says in shown["error"]
    assert service.releases() == [], "nothing was asked, so nothing is recorded"


def test_gantry_approve_reject_and_policy_show_through_the_real_cli(
    service: Service, approvers: Approvers, local_stack: Stack
) -> None:
    approvers.write_policy(local_stack.settings, "alice", "bob", approval_timeout=600)
    shown = as_json(gantry(local_stack, "policy", "show", "--json"))
    assert shown["valid"] is True
    assert shown["path"] == str(local_stack.settings.state_dir / POLICY_FILE)
    assert shown["principals"] == ["alice@example.invalid", "bob@example.invalid"]
    assert (shown["approval_timeout"], shown["allow_self_approval"]) == (600, False)

    service.merge("v1")
    run_id = service.start_release()
    wait_for(run_id, paused)
    key = str(approvers.keys["mallory"])
    refused = gantry(local_stack, "approve", run_id, "--key", key, "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "bad_signature" in as_json(refused)["message"]
    rejected = gantry(
        local_stack,
        "reject",
        run_id,
        "--reason",
        "wrong week",
        "--key",
        str(approvers.keys["bob"]),
        "--json",
    )
    assert rejected.returncode == 0, rejected.stdout + rejected.stderr
    assert as_json(rejected)["accepted"] is True
    run = wait_for(run_id, final)
    assert run.state is not None and run.state.is_cancelled()
    record = service.releases()[0]
    assert (record.outcome, record.approved_by) == ("rejected", "bob@example.invalid")
    assert record.decision_comment == "wrong week"

    service.merge("v2")
    run_id = service.start_release()
    wait_for(run_id, paused)
    approved = gantry(local_stack, "approve", run_id, "--key", str(approvers.keys["alice"]))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    run = wait_for(run_id, final)
    assert run.state is not None and run.state.is_completed(), run.state
    assert service.releases()[0].approved_by == "alice@example.invalid"
