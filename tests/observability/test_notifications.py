"""Chat notifications: Prefect automations posting through Prefect's SlackWebhook block, and
paging left to Datadog alone.

The slow tests run a Prefect server of their own whose actions service reaches the Slack
stand-in (tests/fakes/slack_webhook.py) through its proxy and test CA: the real block, the
real apprise Slack plugin, the real automations, and no request off the machine.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import queue
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.server.events.actions import SendNotification as ServerSendNotification
from prefect.states import Paused, Running

from clients.metrics import Metrics
from core.ports import free_port
from core.redact import redact
from core.settings import StackSettings
from deployments.notifications import (
    BLOCK_NAME,
    ENV_SLACK_WEBHOOK_URL,
    MERGE_FLOW,
    NAME_PREFIX,
    PIPELINE_FLOWS,
    RELEASE_FLOW,
    apply_notifications,
    apply_notifications_from_env,
    notification_automations,
    webhook_url_from_env,
)
from deployments.prefect_server import PrefectServer, venv_bin
from deployments.stack import Stack
from flows.records.announce import RELEASE_FAILED_EVENT, announce_release
from flows.records.store import ReleaseRecord
from tests.fakes.pagerduty_api import FakePagerDuty
from tests.fakes.slack_webhook import FakeSlack, SlackRequest
from tests.observability.conftest import StatsdListener
from tests.plugins.prefect_server import prefect_api

PROJECT = Path(__file__).resolve().parents[2]
MONITORS = PROJECT / "infra/terraform/modules/monitoring/monitors.tf"
REPOSITORY = "acme/payments-api"
COMMIT = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
# How long an event may take to become a message: the server's trigger and action services
# run on their own loops; generous, since the machine is shared.
DELIVERY_SECONDS = 90.0
# After the first message: time enough for a duplicate to show up if the trigger matched twice.
QUIET_SECONDS = 8.0


# -- the automations' definitions (fast) ---------------------------------------------------


def by_name(block: uuid.UUID | None = None) -> dict[str, Automation]:
    return {a.name: a for a in notification_automations(block or uuid.uuid4())}


def test_four_automations_each_on_one_kind_of_event() -> None:
    automations = by_name()
    expects = {
        name.removeprefix(NAME_PREFIX): getattr(a.trigger, "expect", None)
        for name, a in automations.items()
    }
    assert expects == {
        "merge run failed": {"prefect.flow-run.Failed"},
        "release failed": {RELEASE_FAILED_EVENT},
        "release waits for approval": {"prefect.flow-run.Paused"},
        "pipeline run crashed": {"prefect.flow-run.Crashed"},
    }
    for automation in automations.values():
        trigger: Any = automation.trigger
        # One event, one firing: reactive, a threshold of one, no window to count in.
        assert (trigger.posture, trigger.threshold, trigger.within.total_seconds()) == (
            "Reactive",
            1,
            0,
        )
        assert not trigger.after
        [action] = automation.actions
        assert action.type == "send-notification"


def test_flow_run_triggers_name_the_pipelines_flows() -> None:
    from flows.pipelines.merge import merge_pipeline
    from flows.pipelines.pr import pr_pipeline
    from flows.pipelines.release import release_pipeline

    assert (pr_pipeline.name, merge_pipeline.name, release_pipeline.name) == PIPELINE_FLOWS
    related: dict[str, Any] = {
        name.removeprefix(NAME_PREFIX): getattr(a.trigger, "match_related", None)
        for name, a in by_name().items()
    }
    assert related["merge run failed"]["prefect.resource.name"] == ["merge-pipeline"]
    assert related["release waits for approval"]["prefect.resource.name"] == ["release-pipeline"]
    assert related["pipeline run crashed"]["prefect.resource.name"] == list(PIPELINE_FLOWS)
    del related["release failed"]
    assert all(r["prefect.resource.role"] == ["flow"] for r in related.values())


def test_templates_are_valid_for_the_server_and_name_repository_commit_outcome_and_run() -> None:
    for name, automation in by_name().items():
        action: Any = automation.actions[0]
        # The server's own validation (sandboxed Jinja) of what it will render.
        ServerSendNotification.model_validate(action.model_dump(mode="json"))
        body = action.body
        assert "repository" in body, name
        assert "commit" in body, name
        assert re.search(r"outcome", body, re.IGNORECASE), name
        assert "ui_url" in body or "run_url" in body, name


def test_no_webhook_url_means_off_and_a_foreign_url_is_refused_unquoted() -> None:
    assert webhook_url_from_env({}) is None
    assert webhook_url_from_env({ENV_SLACK_WEBHOOK_URL: "  "}) is None
    foreign = "https://chat.example.com/hooks/T0SECRETPART/B0SECRETPART/ZZZZ"
    with pytest.raises(ValueError, match=ENV_SLACK_WEBHOOK_URL) as caught:
        webhook_url_from_env({ENV_SLACK_WEBHOOK_URL: foreign})
    assert "SECRETPART" not in str(caught.value)


def test_the_webhook_url_is_masked_in_logs() -> None:
    url = "https://hooks.slack.com/services/T0AAAAAAA/B0BBBBBBB/cccccccccccccccccccccccc"
    secret = webhook_url_from_env({ENV_SLACK_WEBHOOK_URL: url})
    assert secret is not None and secret.get_secret_value() == url
    assert "cccccccccccccccccccccccc" not in redact(f"posting to {url}")


# -- paging is Datadog's: the monitor covers what announce sends (fast) ---------------------


def test_the_release_monitor_pages_p1_on_the_metric_announce_sends(
    monkeypatch: pytest.MonkeyPatch, statsd: StatsdListener
) -> None:
    # What a production worker's flow run sends: DD_ENV becomes the env tag.
    monkeypatch.setenv("DD_ENV", "production")
    metrics = Metrics("127.0.0.1", statsd.port)
    try:
        metrics.release_outcome("failed", REPOSITORY)
        metrics.release_outcome("rolled_back", REPOSITORY)
        sent = statsd.receive(2)
    finally:
        metrics.close()
    text = MONITORS.read_text()
    block = text[text.index('resource "datadog_monitor" "release_failed"') :]
    block = block[: block.index('\nresource "')]
    query = re.search(r'query\s*=\s*"(.+)"', block)
    assert query is not None
    for datagram in sent:
        outcome = datagram.tag("outcome")
        # The query filters on the same metric and tags the datagram carries, env included.
        assert datagram.name == "gantry.release.outcome"
        assert datagram.tag("env") == "production"
        assert f"sum:{datagram.name}{{${{local.env}},outcome:{outcome}}}" in query.group(1)
    assert 'priority = "1"' in block
    # P1 routes to the PagerDuty P1 service when the environment pages (production does).
    assert "${local.recipients[1]}" in block
    assert "@pagerduty-${local.pagerduty_services.p1.name}" in text


# -- the real thing (slow) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def slack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSlack]:
    with FakeSlack(tmp_path_factory.mktemp("slack")) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, slack: FakeSlack
) -> Iterator[PrefectServer]:
    """A Prefect server whose actions service posts to the stand-in: the proxy, the test CA
    and loopback unproxied in its environment (PrefectServer copies this process's)."""
    settings = StackSettings(home=tmp_path_factory.mktemp("chat-server"), prefect_port=free_port())
    server = PrefectServer(settings)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in slack.env().items():
            patch.setenv(name, value)
        server.start(timeout=120)
    try:
        with prefect_api(settings):
            yield server
    finally:
        server.stop()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def ours() -> list[str]:
    async with get_client() as client:
        return sorted(
            a.name for a in await client.read_automations() if a.name.startswith(NAME_PREFIX)
        )


def drain_events() -> None:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)


def only_message(slack: FakeSlack, before: int) -> SlackRequest:
    """The one message after the first ``before``: waits for it, then long enough to see a
    second one if there were going to be one."""
    slack.wait_for_messages(before + 1, DELIVERY_SECONDS)
    slack.wait_for_messages(before + 2, QUIET_SECONDS)
    new = slack.messages[before:]
    assert len(new) == 1, [m.text for m in new]
    return new[0]


@pytest.mark.slow
def test_applying_twice_then_a_failed_release_posts_once_and_pages_no_one(
    chat_server: PrefectServer, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SLACK_WEBHOOK_URL, slack.webhook_url)
    # What `gantry up` runs, twice: one block and one automation of each name.
    stack = Stack(chat_server.settings)
    assert stack.apply_notifications() == stack.apply_notifications()
    names = run(ours())
    assert names == sorted(a.name for a in notification_automations(uuid.uuid4()))
    assert len(names) == 4

    async def blocks() -> list[str]:
        async with get_client() as client:
            return [d.name for d in await client.read_block_documents() if d.name == BLOCK_NAME]

    assert run(blocks()) == [BLOCK_NAME]

    # Paging stays Datadog's: a PagerDuty stand-in behind the variables Gantry once read.
    with FakePagerDuty() as pagerduty:
        monkeypatch.setenv("GANTRY_PAGERDUTY_ROUTING_KEY", pagerduty.routing_key)
        monkeypatch.setenv("GANTRY_PAGERDUTY_EVENTS_URL", pagerduty.events_url)
        before = len(slack.messages)
        run_url = f"{chat_server.url}/runs/flow-run/{uuid.uuid4()}"
        record = ReleaseRecord(
            id=f"release-{uuid.uuid4().hex[:8]}",
            repository_slug=REPOSITORY,
            candidate_id="cand-1",
            commit_sha=COMMIT,
            images={"api": "registry/api@sha256:" + "0" * 64},
            outcome="rolled_back",
            detail="smoke check failed; rolled back to the previous release",
            started_at=datetime.now(UTC),
        )
        run(announce_release(record, run_url))
        drain_events()
        message = only_message(slack, before)
        assert pagerduty.requests == []
    assert REPOSITORY in message.text
    assert run_url in message.text
    assert COMMIT[:12] in message.text and "rolled back" in message.text
    # Only Slack's host was asked for: nothing else was reached through the proxy.
    assert set(slack.connects) == {"CONNECT hooks.slack.com:443"}


@pytest.mark.slow
def test_a_release_waiting_for_approval_posts_once_and_no_url_turns_it_off(
    chat_server: PrefectServer, slack: FakeSlack
) -> None:
    from flows.pipelines.release import release_pipeline

    run(apply_notifications(webhook_url_from_env({ENV_SLACK_WEBHOOK_URL: slack.webhook_url})))

    async def pause_a_release() -> str:
        async with get_client() as client:
            flow_run = await client.create_flow_run(
                release_pipeline, parameters={"repository_name": REPOSITORY}
            )
            await client.set_flow_run_state(flow_run.id, Running(), force=True)
            # What apause_flow_run proposes at the approval gate.
            await client.set_flow_run_state(
                flow_run.id, Paused(timeout_seconds=3600, pause_key="approval-1"), force=True
            )
            return str(flow_run.id)

    before = len(slack.messages)
    flow_run_id = run(pause_a_release())
    message = only_message(slack, before)
    assert REPOSITORY in message.text
    assert f"/runs/flow-run/{flow_run_id}" in message.text
    assert "approval" in message.text

    # Without a webhook URL, notifications are off: the automations and the block are removed.
    report = run(apply_notifications_from_env({}))
    assert not report.enabled
    assert report.summary() == f"chat notifications are off ({ENV_SLACK_WEBHOOK_URL} is not set)"
    assert run(ours()) == []
    assert BLOCK_NAME in report.removed
    # Off again, with nothing left to remove (`gantry up` on a fresh stack): nothing to do.
    assert run(apply_notifications_from_env({})).removed == []


@pytest.mark.slow
def test_the_cli_applies_to_the_server_prefect_api_url_names(
    chat_server: PrefectServer, slack: FakeSlack
) -> None:
    # What a production deploy runs: the cluster's Prefect from the environment, no local stack.
    settings = chat_server.settings
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GANTRY_"))},
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_API_AUTH_STRING": settings.api_auth_string(),
    }

    def apply(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv_bin("gantry"), "notifications", "apply", "--json"],
            env={**base, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    on = apply(**{ENV_SLACK_WEBHOOK_URL: slack.webhook_url})
    assert on.returncode == 0, on.stderr
    report = json.loads(on.stdout)
    assert report["enabled"] is True and len(report["automations"]) == 4
    assert run(ours()) == sorted(report["automations"])
    assert slack.webhook_url not in on.stdout + on.stderr

    foreign = "https://chat.example.com/hooks/T0/B0/not-for-your-eyes"
    refused = apply(**{ENV_SLACK_WEBHOOK_URL: foreign})
    assert refused.returncode == 2
    assert ENV_SLACK_WEBHOOK_URL in refused.stderr and "not-for-your-eyes" not in refused.stderr
    assert run(ours()) == sorted(report["automations"])  # a refused URL changes nothing

    off = apply()
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["enabled"] is False
    assert run(ours()) == []


@pytest.mark.slow
def test_a_merge_run_prefect_retries_posts_nothing_until_its_final_failure(
    chat_server: PrefectServer, slack: FakeSlack
) -> None:
    from prefect import flow

    run(apply_notifications(webhook_url_from_env({ENV_SLACK_WEBHOOK_URL: slack.webhook_url})))
    attempts: dict[str, int] = {}

    # Named like the pipeline, so the automation's related-flow match takes its events.
    @flow(name=MERGE_FLOW, retries=1, retry_delay_seconds=0, persist_result=False)
    def retried_merge(repository_name: str, sha: str, failures: int) -> None:
        attempts[sha] = attempts.get(sha, 0) + 1
        if attempts[sha] <= failures:
            raise RuntimeError(f"attempt {attempts[sha]} of {sha[:12]} failed")

    recovered, failed = "1" * 40, "2" * 40
    before = len(slack.messages)
    # One run fails once and passes on its retry; the next fails on its retry too.
    first = retried_merge(REPOSITORY, recovered, 1, return_state=True)
    second = retried_merge(REPOSITORY, failed, 2, return_state=True)
    assert first.is_completed() and second.is_failed()
    assert attempts == {recovered: 2, failed: 2}

    async def state_names(state: Any) -> list[str]:
        async with get_client() as client:
            states = await client.read_flow_run_states(state.state_details.flow_run_id)
        return [s.name or "" for s in sorted(states, key=lambda s: s.timestamp)]

    # Both passed AwaitingRetry on the server (the event the automation must not take).
    assert "AwaitingRetry" in run(state_names(first))
    assert run(state_names(second))[-1] == "Failed"
    assert "AwaitingRetry" in run(state_names(second))
    # One message: the second run's last failure. The retried ones were not told.
    message = only_message(slack, before)
    assert failed[:12] in message.text and "attempt 2" in message.text
    assert recovered[:12] not in message.text and "attempt 1" not in message.text


@pytest.mark.slow
def test_a_refused_approval_pauses_the_release_again_and_chat_is_told_again(
    chat_server: PrefectServer, slack: FakeSlack, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.runtime import flow_run as current_run

    from flows.pipelines.approval import GateResult, wait_for_approval
    from flows.records.store import ReleaseCandidate
    from tests.flows.pipelines.approvers import COMMIT_AUTHOR, Approvers

    run(apply_notifications(webhook_url_from_env({ENV_SLACK_WEBHOOK_URL: slack.webhook_url})))
    approvers = Approvers(tmp_path)
    policy = approvers.policy("alice", approval_timeout=600)
    candidate = ReleaseCandidate(
        id=f"rc-{uuid.uuid4().hex[:8]}",
        repository=f"https://github.com/{REPOSITORY}",
        repository_slug=REPOSITORY,
        commit_sha=COMMIT,
        images={"api": "registry.example.invalid/api@sha256:" + "1" * 64},
        flow_run_id=str(uuid.uuid4()),
        commit_author=COMMIT_AUTHOR,
    )
    started: queue.Queue[str] = queue.Queue()
    ended: dict[str, GateResult] = {}

    # The release flow's gate, the real one, in a run named like the pipeline.
    @flow(name=RELEASE_FLOW, persist_result=False)
    async def gate(repository_name: str, candidate_id: str) -> GateResult:
        run_id = str(current_run.id)
        started.put(run_id)
        return await wait_for_approval(candidate, policy, run_id, Metrics(), REPOSITORY)

    def release() -> None:
        ended["gate"] = asyncio.run(gate(REPOSITORY, candidate.id))

    before = len(slack.messages)
    # The thread runs in a copy of this context: Prefect's settings (the chat server) with it.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(release,), daemon=True)
    thread.start()
    try:
        run_id = started.get(timeout=DELIVERY_SECONDS)
        [first] = slack.wait_for_messages(before + 1, DELIVERY_SECONDS)[before:]
        assert f"/runs/flow-run/{run_id}" in first.text and REPOSITORY in first.text
        # The approver is told what they are asked to approve: the commit, whole, and the
        # candidate (the gate tagged its run with both before it paused).
        assert f"at commit {COMMIT} waits" in first.text
        assert f"(candidate {candidate.id})" in first.text
        # An unsigned answer: refused, and the gate pauses again under a new key.
        refused = approvers.send(run_id, approvers.statement(run_id), None)
        assert not refused.accepted and "(unsigned)" in refused.message
        told = slack.wait_for_messages(before + 2, DELIVERY_SECONDS)[before:]
        assert len(told) == 2, [m.text for m in told]
        assert f"/runs/flow-run/{run_id}" in told[1].text and "approval" in told[1].text
        # Alice's signed answer is taken: the gate returns, and nothing more is posted.
        assert approvers.answer(run_id, "alice").accepted
    finally:
        thread.join(DELIVERY_SECONDS)
    assert not thread.is_alive()
    result = ended["gate"]
    assert (result.outcome, result.refused) == ("approved", ["unsigned"])
    # Two pauses, two messages: neither told twice, and the approval tells nothing.
    assert len(slack.wait_for_messages(before + 3, QUIET_SECONDS)) == before + 2
