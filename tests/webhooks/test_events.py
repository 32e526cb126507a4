"""Event mapping: which deliveries start which pipeline, with which parameters, and which do not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core.settings import MERGE_DEPLOYMENT, PR_DEPLOYMENT, RELEASE_DEPLOYMENT
from tests.webhooks import payloads
from webhooks.events import Ignored, PayloadError, PipelineRequest, map_event

DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def mapped(event: str, payload: dict[str, Any]) -> PipelineRequest:
    result = map_event(event, DELIVERY, payload, repositories=payloads.ALLOWLIST)
    assert isinstance(result, PipelineRequest), result
    return result


def ignored(event: str, payload: dict[str, Any]) -> Ignored:
    result = map_event(event, DELIVERY, payload, repositories=payloads.ALLOWLIST)
    assert isinstance(result, Ignored), result
    return result


@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened", "ready_for_review"])
def test_pull_request_actions_that_change_code_start_the_pr_pipeline(action: str) -> None:
    request = mapped("pull_request", payloads.pull_request(action=action))
    assert request.pipeline == "pr"
    assert request.deployment == PR_DEPLOYMENT
    assert request.parameters == {
        "repository": None,
        "sha": payloads.SHA,
        "pr_number": 42,
        "head_ref": "feature/x",
        "fork": False,
        "repository_name": "acme/api",
        "repository_id": payloads.REPOSITORY_ID,
    }
    assert request.run_name == f"pr-42-{payloads.SHA[:7]}"
    assert {"repo:acme/api", "pr:42", f"delivery:{DELIVERY}", "pipeline:pr"} <= set(request.tags)
    assert request.idempotency_key == DELIVERY


@pytest.mark.parametrize(
    "action", ["closed", "edited", "labeled", "assigned", "converted_to_draft"]
)
def test_other_pull_request_actions_start_nothing(action: str) -> None:
    assert "starts nothing" in ignored("pull_request", payloads.pull_request(action=action)).reason


def test_a_closed_pull_request_needs_no_valid_pr_fields() -> None:
    assert ignored("pull_request", {"action": "closed", "number": "not even an int"})


@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened"])
def test_draft_pull_requests_wait_until_ready_for_review(action: str) -> None:
    reason = ignored("pull_request", payloads.pull_request(action=action, draft=True)).reason
    assert "draft" in reason


def test_a_draft_marked_ready_for_review_runs() -> None:
    payload = payloads.pull_request(action="ready_for_review", draft=False)
    assert mapped("pull_request", payload).pipeline == "pr"


def test_a_pull_request_from_a_fork_is_marked_fork_and_clones_the_base() -> None:
    request = mapped("pull_request", payloads.pull_request(head_repo="mallory/api"))
    assert request.parameters["fork"] is True
    assert request.parameters["repository"] is None  # the base, built from its identity
    assert request.parameters["repository_name"] == "acme/api"
    assert request.parameters["repository_id"] == payloads.REPOSITORY_ID


def test_a_pull_request_whose_fork_was_deleted_is_treated_as_a_fork() -> None:
    request = mapped("pull_request", payloads.pull_request(head_repo=None))
    assert request.parameters["fork"] is True


def test_a_push_to_the_default_branch_starts_the_merge_pipeline() -> None:
    request = mapped("push", payloads.push())
    assert request.deployment == MERGE_DEPLOYMENT
    assert request.parameters == {
        "repository": None,
        "sha": payloads.SHA,
        "ref": "main",
        "repository_name": "acme/api",
        "repository_id": payloads.REPOSITORY_ID,
    }
    assert request.run_name == f"merge-main-{payloads.SHA[:7]}"
    assert not any(tag.startswith("pr:") for tag in request.tags)


def test_the_default_branch_is_whatever_the_repository_says() -> None:
    push = payloads.push(ref="refs/heads/trunk", default_branch="trunk")
    assert mapped("push", push).parameters["ref"] == "trunk"
    assert ignored("push", payloads.push(ref="refs/heads/main", default_branch="trunk"))


@pytest.mark.parametrize(
    "push",
    [
        payloads.push(ref="refs/heads/feature/x"),
        payloads.push(ref="refs/tags/v1.0.0"),
        payloads.push(ref="refs/tags/main"),
        payloads.push(after=payloads.ZEROS, deleted=True),
        payloads.push(after=payloads.ZEROS),
    ],
    ids=["other-branch", "tag", "tag-named-like-the-branch", "deletion", "zero-after"],
)
def test_pushes_other_than_to_the_default_branch_start_nothing(push: dict[str, Any]) -> None:
    assert ignored("push", push)


def test_a_published_release_starts_the_release_pipeline() -> None:
    request = mapped("release", payloads.release())
    assert request.deployment == RELEASE_DEPLOYMENT
    assert request.parameters == {
        "repository_name": "acme/api",
        "repository_id": payloads.release()["repository"]["id"],
        "candidate_id": None,
        "tag": "v1.2.3",
        "triggered_by": "github:releaser",
    }
    assert request.run_name == "release-v1-2-3"


@pytest.mark.parametrize("action", ["created", "edited", "prereleased", "released", "deleted"])
def test_release_actions_other_than_published_start_nothing(action: str) -> None:
    assert ignored("release", payloads.release(action=action))


@pytest.mark.parametrize("event", ["ping", "issues", "workflow_run", "check_suite", "star"])
def test_unknown_events_start_nothing(event: str) -> None:
    assert ignored(event, payloads.ping())


def set_path(payload: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    node: Any = payload
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return payload


DELETE = object()


@pytest.mark.parametrize(
    ("event", "payload", "path", "value"),
    [
        ("pull_request", payloads.pull_request(), "pull_request", DELETE),
        ("pull_request", payloads.pull_request(), "number", "42"),
        ("pull_request", payloads.pull_request(), "number", -1),
        ("pull_request", payloads.pull_request(), "pull_request.head.sha", "not-a-sha"),
        ("pull_request", payloads.pull_request(), "pull_request.head.sha", "A" * 40),
        ("pull_request", payloads.pull_request(), "pull_request.head.ref", 7),
        ("pull_request", payloads.pull_request(), "pull_request.draft", "false"),
        ("pull_request", payloads.pull_request(), "repository.full_name", "no-slash"),
        ("pull_request", payloads.pull_request(), "repository.full_name", "a/b c"),
        ("pull_request", payloads.pull_request(), "repository", None),
        ("push", payloads.push(), "after", DELETE),
        ("push", payloads.push(), "after", 12),
        ("push", payloads.push(), "repository.default_branch", DELETE),
        ("push", payloads.push(), "deleted", "no"),
        ("release", payloads.release(), "release.tag_name", DELETE),
        ("release", payloads.release(), "release.tag_name", ""),
    ],
)
def test_incomplete_or_mistyped_payloads_are_payload_errors_naming_the_field(
    event: str, payload: dict[str, Any], path: str, value: object
) -> None:
    with pytest.raises(PayloadError) as caught:
        map_event(event, DELIVERY, set_path(payload, path, value), repositories=payloads.ALLOWLIST)
    assert path.split(".")[0] in str(caught.value)


def test_extra_fields_are_tolerated() -> None:
    payload = payloads.push()
    payload["something_new"] = {"nested": [1, 2, 3]}
    payload["repository"]["topics"] = ["ai"]
    assert mapped("push", payload).pipeline == "merge"


@pytest.mark.parametrize(
    "ref",
    ['zzz";echo${IFS}"hello";#', "$(id)", "a\nb\r\nc", "`touch /tmp/x`", "../../etc/passwd"],
)
def test_hostile_branch_names_stay_data_and_never_reach_names_or_tags(ref: str) -> None:
    request = mapped("pull_request", payloads.pull_request(head_ref=ref))
    assert request.parameters["head_ref"] == ref
    for text in [request.run_name, *request.tags]:
        assert all(ch.isalnum() or ch in "-:/._" for ch in text), text


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("pull_request", payloads.pull_request()),
        ("push", payloads.push()),
        ("release", payloads.release()),
    ],
)
def test_no_parameter_carries_the_payloads_clone_url(event: str, payload: dict[str, Any]) -> None:
    payload["repository"]["clone_url"] = "file:///etc/evil-repository"
    request = mapped(event, payload)
    assert "file:///etc/evil-repository" not in repr(request)
    assert request.parameters["repository_name"] == "acme/api"
    assert request.parameters["repository_id"] == payloads.REPOSITORY_ID


def test_a_payload_without_the_repository_id_is_refused() -> None:
    payload = payloads.push()
    del payload["repository"]["id"]
    with pytest.raises(PayloadError, match=r"repository\.id"):
        map_event("push", DELIVERY, payload, repositories=payloads.ALLOWLIST)


@pytest.mark.parametrize("event", ["pull_request", "push", "release"])
def test_a_repository_off_the_allowlist_starts_nothing(event: str) -> None:
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "pull_request": payloads.pull_request,
        "push": payloads.push,
        "release": payloads.release,
    }
    payload = makers[event]()
    payload["repository"] = payloads.repository("mallory/api")
    result = map_event(event, DELIVERY, payload, repositories=payloads.ALLOWLIST)
    assert isinstance(result, Ignored)
    assert "mallory/api is not served" in result.reason


def test_without_an_allowlist_nothing_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANTRY_WEBHOOK_REPOSITORIES", raising=False)
    result = map_event("push", DELIVERY, payloads.push())
    assert isinstance(result, Ignored) and "not served" in result.reason
