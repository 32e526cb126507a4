"""Event mapping: which deliveries start which pipeline, with which parameters, and which do not."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from core.settings import MERGE_DEPLOYMENT, PR_DEPLOYMENT, RELEASE_DEPLOYMENT
from tests.webhooks import payloads
from webhooks.events import Ignored, PayloadError, PipelineRequest, map_event
from webhooks.settings import ApprovalPolicy

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


@pytest.mark.parametrize("event", ["ping", "issues", "workflow_run", "status", "star"])
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
        ("check_run", payloads.check_run()),
        ("check_suite", payloads.check_suite()),
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


@pytest.mark.parametrize("event", ["pull_request", "push", "release", "check_run", "check_suite"])
def test_a_repository_off_the_allowlist_starts_nothing(event: str) -> None:
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "pull_request": payloads.pull_request,
        "push": payloads.push,
        "release": payloads.release,
        "check_run": payloads.check_run,
        "check_suite": payloads.check_suite,
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


# -- re-run buttons: check_run and check_suite "rerequested" ---------------------------------

PR_RERUN_PARAMETERS = {
    "repository": None,
    "sha": payloads.SHA,
    "pr_number": 42,
    "head_ref": "feature/x",
    "fork": False,
    "repository_name": "acme/api",
    "repository_id": payloads.REPOSITORY_ID,
}


def test_a_rerequested_pr_check_reruns_its_pull_requests_commit() -> None:
    request = mapped("check_run", payloads.check_run())
    assert request.pipeline == "pr" and request.deployment == PR_DEPLOYMENT
    assert request.parameters == PR_RERUN_PARAMETERS
    assert request.pr_number == 42 and request.repository_name == "acme/api"
    assert request.run_name == f"pr-42-{payloads.SHA[:7]}-rerun"
    assert {"pipeline:pr", "pr:42", "repo:acme/api", f"delivery:{DELIVERY}", "rerun"} <= set(
        request.tags
    )
    assert "approved" not in request.tags  # a branch of the repository itself needs none
    # A redelivery of this rerequest keeps its id, so it finds this run instead of a new one.
    assert request.idempotency_key == DELIVERY


def test_a_rerun_takes_exactly_the_parameters_of_the_real_pipelines() -> None:
    from flows.pipelines.merge import merge_pipeline
    from flows.pipelines.pr import pr_pipeline

    def accepted(flow: Any) -> set[str]:
        return set(inspect.signature(flow.fn).parameters)

    pr = mapped("check_run", payloads.check_run())
    merge = mapped("check_suite", payloads.check_suite(head_branch="main"))
    assert set(pr.parameters) <= accepted(pr_pipeline)
    assert set(merge.parameters) <= accepted(merge_pipeline)
    # The same parameters a push or a pull request delivery gives the same deployment.
    assert set(pr.parameters) == set(mapped("pull_request", payloads.pull_request()).parameters)
    assert set(merge.parameters) == set(mapped("push", payloads.push()).parameters)


def test_the_rerun_commit_is_the_check_runs_even_when_the_pull_request_moved_on() -> None:
    listed = payloads.check_pull_request(sha=payloads.SHA2, head_ref="feature/y")
    payload = payloads.check_run(sha=payloads.SHA, pull_requests=[listed])
    request = mapped("check_run", payload)
    assert request.parameters["sha"] == payloads.SHA
    assert request.parameters["head_ref"] == "feature/y"  # the listed PR's branch


def test_the_pull_request_is_the_one_the_external_id_names() -> None:
    payload = payloads.check_run(
        external_id=f"pr:43:{payloads.FLOW_RUN_ID}",
        head_branch="suite-branch",
        pull_requests=[
            payloads.check_pull_request(number=42, head_ref="other"),
            payloads.check_pull_request(number=43, head_ref="feature/z"),
        ],
    )
    request = mapped("check_run", payload)
    assert request.parameters["pr_number"] == 43 and request.pr_number == 43
    assert request.parameters["head_ref"] == "feature/z"
    assert request.parameters["fork"] is False
    assert "pr:43" in request.tags and request.run_name.startswith("pr-43-")


def test_a_pr_check_github_lists_no_pull_request_for_is_a_forks_and_counts_as_approved() -> None:
    # The Checks API leaves fork pull requests out of pull_requests.
    payload = payloads.check_run(head_branch="patch-1", pull_requests=[])
    request = mapped("check_run", payload)
    assert request.parameters["fork"] is True
    assert request.parameters["head_ref"] == "patch-1"  # from the check suite
    assert {"approved", "rerun"} <= set(request.tags)


def test_a_listed_pull_request_whose_head_lives_in_another_repository_is_a_fork() -> None:
    listed = payloads.check_pull_request(head_repo_id=payloads.FORK_REPOSITORY_ID)
    request = mapped("check_run", payloads.check_run(pull_requests=[listed]))
    assert request.parameters["fork"] is True
    assert "approved" in request.tags


def test_a_forks_rerun_needs_no_label_even_from_an_untrusted_policy() -> None:
    # Nobody is trusted and the label is absent: a re-run button still runs the commit,
    # since only people with write access see one.
    approvals = {"*": ApprovalPolicy(trusted_associations=())}
    result = map_event(
        "check_run",
        DELIVERY,
        payloads.check_run(pull_requests=[]),
        approvals=approvals,
        repositories=payloads.ALLOWLIST,
    )
    assert isinstance(result, PipelineRequest) and result.parameters["fork"] is True


def test_a_rerequested_merge_check_reruns_the_default_branchs_commit() -> None:
    payload = payloads.check_run(
        external_id=f"merge::{payloads.FLOW_RUN_ID}", head_branch="main", pull_requests=[]
    )
    request = mapped("check_run", payload)
    assert request.pipeline == "merge" and request.deployment == MERGE_DEPLOYMENT
    assert request.parameters == {
        "repository": None,
        "sha": payloads.SHA,
        "ref": "main",
        "repository_name": "acme/api",
        "repository_id": payloads.REPOSITORY_ID,
    }
    assert request.run_name == f"merge-main-{payloads.SHA[:7]}-rerun"
    assert {"pipeline:merge", "rerun", f"delivery:{DELIVERY}"} <= set(request.tags)
    assert request.pr_number is None and request.idempotency_key == DELIVERY


def test_a_merge_check_off_the_default_branch_starts_nothing() -> None:
    payload = payloads.check_run(
        external_id=f"merge::{payloads.FLOW_RUN_ID}", head_branch="feature/x"
    )
    assert "default branch" in ignored("check_run", payload).reason


def test_a_rerequested_release_check_starts_nothing_a_release_is_rerun_by_gantry() -> None:
    payload = payloads.check_run(external_id=f"release::{payloads.FLOW_RUN_ID}", head_branch="main")
    reason = ignored("check_run", payload).reason
    assert reason == "a release is re-run with `gantry release`, where it is approved"


@pytest.mark.parametrize(
    "external_id",
    [
        None,
        "",
        "ci-1234",
        f"lint:42:{payloads.FLOW_RUN_ID}",
        f"pr::{payloads.FLOW_RUN_ID}",  # a PR check without its pull request
        "pr:42:",
        f"pr:0:{payloads.FLOW_RUN_ID}",
        f"pr:042:{payloads.FLOW_RUN_ID}",
        f"pr:4_2:{payloads.FLOW_RUN_ID}",
        f"pr:-1:{payloads.FLOW_RUN_ID}",
        f"pr:42:{payloads.FLOW_RUN_ID}:extra",
        "pr:42:$(id)",
        f"PR:42:{payloads.FLOW_RUN_ID}",
    ],
)
def test_a_check_run_gantry_did_not_make_starts_nothing(external_id: str | None) -> None:
    payload = payloads.check_run(external_id=external_id)
    assert ignored("check_run", payload).reason == "not a Gantry check run"


def test_a_check_run_without_an_external_id_field_starts_nothing() -> None:
    payload = payloads.check_run()
    del payload["check_run"]["external_id"]
    assert ignored("check_run", payload).reason == "not a Gantry check run"


def test_a_rerequested_suite_on_the_default_branch_reruns_the_merge_pipeline() -> None:
    request = mapped("check_suite", payloads.check_suite(head_branch="main", pull_requests=[]))
    assert request.pipeline == "merge"
    assert request.parameters["sha"] == payloads.SHA and request.parameters["ref"] == "main"
    assert request.run_name.endswith("-rerun") and "rerun" in request.tags


def test_a_rerequested_suite_of_a_pull_request_reruns_its_first_pull_request() -> None:
    payload = payloads.check_suite(
        pull_requests=[
            payloads.check_pull_request(number=42),
            payloads.check_pull_request(number=44, head_ref="other"),
        ]
    )
    request = mapped("check_suite", payload)
    assert request.pipeline == "pr"
    assert request.parameters == PR_RERUN_PARAMETERS
    assert request.run_name == f"pr-42-{payloads.SHA[:7]}-rerun"
    assert {"pr:42", "rerun"} <= set(request.tags) and "approved" not in request.tags


def test_a_rerequested_suite_naming_no_pull_request_points_to_one_checks_button() -> None:
    payload = payloads.check_suite(head_branch="patch-1", pull_requests=[])
    reason = ignored("check_suite", payload).reason
    assert "fork" in reason and "re-run button of one check" in reason


@pytest.mark.parametrize(
    ("event", "action"),
    [
        ("check_run", "created"),
        ("check_run", "completed"),
        ("check_run", "requested_action"),
        ("check_suite", "requested"),
        ("check_suite", "completed"),
    ],
)
def test_other_check_actions_start_nothing(event: str, action: str) -> None:
    makers: dict[str, Callable[..., dict[str, Any]]] = {
        "check_run": payloads.check_run,
        "check_suite": payloads.check_suite,
    }
    reason = ignored(event, makers[event](action=action)).reason
    assert reason == f"{event} action {action} starts nothing"


@pytest.mark.parametrize(
    "ref",
    ['zzz";echo${IFS}"hello";#', "$(id)", "a\nb\r\nc", "`touch /tmp/x`"],
)
def test_hostile_branch_names_of_a_rerun_stay_data(ref: str) -> None:
    listed = payloads.check_pull_request(head_ref=ref)
    request = mapped("check_run", payloads.check_run(pull_requests=[listed]))
    assert request.parameters["head_ref"] == ref
    for text in [request.run_name, *request.tags]:
        assert all(ch.isalnum() or ch in "-:/._" for ch in text), text


@pytest.mark.parametrize(
    ("event", "payload", "path", "value"),
    [
        ("check_run", payloads.check_run(), "check_run", DELETE),
        ("check_run", payloads.check_run(), "check_run.head_sha", "not-a-sha"),
        ("check_run", payloads.check_run(), "check_run.head_sha", DELETE),
        ("check_run", payloads.check_run(), "check_run.external_id", 42),
        ("check_run", payloads.check_run(), "check_run.check_suite", DELETE),
        ("check_run", payloads.check_run(), "check_run.check_suite.head_branch", 7),
        ("check_run", payloads.check_run(), "check_run.pull_requests", "none"),
        ("check_run", payloads.check_run(), "repository.id", DELETE),
        ("check_run", payloads.check_run(), "repository", None),
        ("check_suite", payloads.check_suite(), "check_suite", DELETE),
        ("check_suite", payloads.check_suite(), "check_suite.head_sha", "A" * 40),
        ("check_suite", payloads.check_suite(), "check_suite.head_branch", ["main"]),
        ("check_suite", payloads.check_suite(), "repository.default_branch", DELETE),
    ],
)
def test_malformed_rerequests_are_payload_errors_naming_the_field(
    event: str, payload: dict[str, Any], path: str, value: object
) -> None:
    with pytest.raises(PayloadError) as caught:
        map_event(event, DELIVERY, set_path(payload, path, value), repositories=payloads.ALLOWLIST)
    assert path.split(".")[0] in str(caught.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("check_run.pull_requests.0.number", "42"),
        ("check_run.pull_requests.0.head.repo", None),
        ("check_run.pull_requests.0.head.sha", "short"),
    ],
)
def test_a_malformed_pull_request_entry_is_a_payload_error(path: str, value: object) -> None:
    payload = payloads.check_run()
    node: Any = payload
    *parents, last = path.split(".")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    with pytest.raises(PayloadError, match=r"check_run\.pull_requests\.0"):
        map_event("check_run", DELIVERY, payload, repositories=payloads.ALLOWLIST)


def test_a_merge_rerun_without_the_default_branch_is_a_payload_error() -> None:
    payload = payloads.check_run(external_id=f"merge::{payloads.FLOW_RUN_ID}", head_branch="main")
    del payload["repository"]["default_branch"]
    with pytest.raises(PayloadError, match=r"repository\.default_branch"):
        map_event("check_run", DELIVERY, payload, repositories=payloads.ALLOWLIST)
