"""First-time contributors: a fork pull request by an untrusted author starts nothing until a
maintainer adds the approval label; a member's runs at once; the label starts exactly one run.

The mapping is pinned directly; then the real receiver over HTTP records each outcome; the last
test dispatches to a real Prefect server and counts the flow runs the label made.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from deployments.prefect_server import PrefectServer
from tests.plugins.prefect_server import prefect_api
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver, real_deployments, receiver_settings
from tests.webhooks.statsd import at_least, metrics_to_agent
from webhooks.events import WAITING, Ignored, PipelineRequest, map_event
from webhooks.settings import (
    APPROVAL_ENV,
    ApprovalPolicy,
    SettingsError,
    load_settings,
)

URL_PATH = "/webhooks/github"
FORK = "mallory/api"
LABEL = "gantry:approved"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_approval_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(APPROVAL_ENV, raising=False)


def fork_pr(association: str, action: str = "opened", **kwargs: Any) -> dict[str, Any]:
    return payloads.pull_request(
        action=action, head_repo=FORK, author_association=association, **kwargs
    )


def mapped(payload: dict[str, Any], **kwargs: Any) -> PipelineRequest | Ignored:
    return map_event(
        "pull_request",
        payloads.new_delivery_id(),
        payload,
        repositories=payloads.ALLOWLIST,
        **kwargs,
    )


@pytest.mark.parametrize(
    "association", ["FIRST_TIME_CONTRIBUTOR", "FIRST_TIMER", "CONTRIBUTOR", "NONE", "MANNEQUIN"]
)
@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened", "ready_for_review"])
def test_an_untrusted_authors_fork_pull_request_waits_for_approval(
    association: str, action: str
) -> None:
    result = mapped(fork_pr(association, action))
    assert isinstance(result, Ignored)
    assert result.reason.startswith(WAITING)
    assert association in result.reason and LABEL in result.reason


def test_a_payload_without_author_association_waits_fail_closed() -> None:
    payload = fork_pr("MEMBER")
    del payload["pull_request"]["author_association"]
    result = mapped(payload)
    assert isinstance(result, Ignored) and result.reason.startswith(WAITING)


@pytest.mark.parametrize("association", ["OWNER", "MEMBER", "COLLABORATOR"])
def test_a_trusted_authors_fork_pull_request_runs_at_once(association: str) -> None:
    result = mapped(fork_pr(association))
    assert isinstance(result, PipelineRequest)
    assert result.parameters["fork"] is True


def test_a_branch_of_the_repository_itself_needs_no_approval() -> None:
    # Pushing a branch to the base repository takes write access already.
    payload = payloads.pull_request(author_association="CONTRIBUTOR")
    assert isinstance(mapped(payload), PipelineRequest)


def test_the_approval_label_starts_the_run_of_the_current_head() -> None:
    payload = fork_pr("FIRST_TIME_CONTRIBUTOR", "labeled", label=LABEL, sha=payloads.SHA2)
    result = mapped(payload)
    assert isinstance(result, PipelineRequest)
    assert result.parameters["sha"] == payloads.SHA2
    assert result.parameters["fork"] is True
    assert "approved" in result.tags


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (fork_pr("FIRST_TIME_CONTRIBUTOR", "labeled", label="bug"), "not the approval label"),
        (fork_pr("MEMBER", "labeled", label=LABEL), "needs none"),
        (fork_pr("NONE", "labeled", label=LABEL, state="closed"), "closed"),
        (fork_pr("NONE", "labeled", label=LABEL, draft=True), "draft"),
    ],
    ids=["other-label", "trusted-author", "closed", "draft"],
)
def test_labels_that_approve_nothing_start_nothing(payload: dict[str, Any], why: str) -> None:
    result = mapped(payload)
    assert isinstance(result, Ignored) and why in result.reason


def test_a_push_after_approval_waits_again_even_with_the_label_on() -> None:
    result = mapped(fork_pr("FIRST_TIME_CONTRIBUTOR", "synchronize", label=LABEL))
    assert isinstance(result, Ignored) and result.reason.startswith(WAITING)


def test_each_repository_may_name_its_label_and_whom_it_trusts() -> None:
    approvals = {
        "ACME/api": ApprovalPolicy(approval_label="ok-to-test"),
        "*": ApprovalPolicy(trusted_associations=("OWNER", "MEMBER", "COLLABORATOR", "NONE")),
    }
    gated = mapped(fork_pr("NONE"), approvals=approvals)
    assert isinstance(gated, Ignored) and "ok-to-test" in gated.reason
    approved = mapped(fork_pr("NONE", "labeled", label="ok-to-test"), approvals=approvals)
    assert isinstance(approved, PipelineRequest)
    assert isinstance(mapped(fork_pr("NONE", "labeled", label=LABEL), approvals=approvals), Ignored)
    other = payloads.pull_request(head_repo=FORK, author_association="NONE")
    other["repository"] = payloads.repository("acme/web")
    assert isinstance(mapped(other, approvals=approvals), PipelineRequest)


def test_the_environment_variable_configures_the_receiver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(APPROVAL_ENV, json.dumps({"acme/api": {"approval_label": "ok-to-test"}}))
    settings = load_settings(
        webhook_secret=payloads.SECRET, webhook_repositories=payloads.SERVED, home=tmp_path
    )
    assert settings.webhook_approval["acme/api"].approval_label == "ok-to-test"
    result = mapped(fork_pr("NONE"))
    assert isinstance(result, Ignored) and "ok-to-test" in result.reason


@pytest.mark.parametrize(
    "value", ['{"acme/api": {"aproval_label": "x"}}', "not json", '{"*": {"approval_label": ""}}']
)
def test_a_bad_approval_setting_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.setenv(APPROVAL_ENV, value)
    with pytest.raises(SettingsError, match=APPROVAL_ENV):
        load_settings(
            webhook_secret=payloads.SECRET, webhook_repositories=payloads.SERVED, home=tmp_path
        )


# The real receiver over HTTP.


async def post(
    http: httpx.AsyncClient, payload: dict[str, Any], delivery_id: str | None = None
) -> httpx.Response:
    body, headers = payloads.signed("pull_request", payload, delivery_id=delivery_id)
    return await http.post(URL_PATH, content=body, headers=headers)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ServedReceiver]:
    with ServedReceiver(receiver_settings(tmp_path), dispatch=False) as served:
        yield served


@pytest.fixture
async def http(receiver: ServedReceiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=receiver.url, timeout=15) as client:
        yield client


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_the_receiver_records_a_first_timers_pr_as_waiting_and_a_members_as_pending(
    receiver: ServedReceiver, http: httpx.AsyncClient
) -> None:
    stranger = payloads.new_delivery_id()
    answer = await post(http, fork_pr("FIRST_TIME_CONTRIBUTOR", number=7), stranger)
    assert answer.status_code == 202
    assert answer.json()["status"] == "ignored"
    assert answer.json()["reason"].startswith(WAITING)
    recorded = receiver.store.get(stranger)
    assert recorded is not None and recorded.request is None
    assert recorded.last_error is not None and recorded.last_error.startswith(WAITING)

    member = payloads.new_delivery_id()
    answer = await post(http, fork_pr("MEMBER", number=8), member)
    assert answer.json()["status"] == "accepted"
    recorded = receiver.store.get(member)
    assert recorded is not None and recorded.status == "pending" and recorded.request is not None

    label = payloads.new_delivery_id()
    labeled = fork_pr("FIRST_TIME_CONTRIBUTOR", "labeled", number=7, label=LABEL)
    assert (await post(http, labeled, label)).json()["status"] == "accepted"
    recorded = receiver.store.get(label)
    assert recorded is not None and recorded.request is not None
    assert recorded.request.pr_number == 7
    # GitHub redelivering the label event does not approve twice.
    assert (await post(http, labeled, label)).json()["status"] == "duplicate"


# The real receiver dispatching to a real Prefect server.


@pytest.fixture
def deployed(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    with prefect_api(prefect_server.settings):
        yield real_deployments(prefect_server)


@pytest.fixture
def dispatching(deployed: PrefectServer, tmp_path: Path) -> Iterator[ServedReceiver]:
    with ServedReceiver(receiver_settings(tmp_path)) as served:
        yield served


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.timeout(180)
async def test_only_the_members_pr_and_the_approval_label_make_flow_runs(
    dispatching: ServedReceiver,
) -> None:
    async with httpx.AsyncClient(base_url=dispatching.url, timeout=15) as http:
        waiting = payloads.new_delivery_id()
        await post(http, fork_pr("FIRST_TIME_CONTRIBUTOR", number=9101), waiting)
        await post(http, fork_pr("MEMBER", number=9102))
        await post(http, fork_pr("FIRST_TIME_CONTRIBUTOR", "labeled", number=9101, label="bug"))
        await post(http, fork_pr("FIRST_TIME_CONTRIBUTOR", "labeled", number=9101, label=LABEL))

    async def runs(number: int) -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["repo:acme/api", f"pr:{number}"])
                )
            )

    deadline = time.monotonic() + 60
    while not (await runs(9101) and await runs(9102)):
        assert time.monotonic() < deadline, "the approved and the member's runs were not made"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # a second run, if any were wrongly made, would be there by now
    (approved,) = await runs(9101)
    assert "approved" in approved.tags
    assert len(await runs(9102)) == 1
    recorded = dispatching.store.get(waiting)
    assert recorded is not None and recorded.status == "ignored"


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_waiting_fork_pull_request_is_counted_as_ignored(http: httpx.AsyncClient) -> None:
    with metrics_to_agent() as agent:
        answer = await post(http, fork_pr("FIRST_TIME_CONTRIBUTOR", number=11))
        assert answer.json()["reason"].startswith(WAITING)
        [counted] = await at_least(agent, "gantry.webhook.deliveries", 1)
    assert counted.tag("outcome") == "ignored"
