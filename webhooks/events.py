"""From a GitHub event to the pipeline run it asks for, if any.

Payloads are parsed into models of just the fields used: tolerant of everything else GitHub
sends, strict (no coercion) on these. Branch names, titles and messages stay data: they travel
as typed flow parameters; anything used in a run name or tag is slugged first.

Only repositories on the receiver's allowlist (``GANTRY_WEBHOOK_REPOSITORIES``) start anything;
a delivery for another is recorded as ignored, saying so. A run names its repository by full
name and GitHub's numeric id only: the payload's ``clone_url`` is never used, the worker builds
the clone URL from its own Git host setting.

Draft pull requests start nothing until they are marked ready for review (``ready_for_review``);
pushes to a draft PR's branch after that run as usual.

Untrusted contributors: a pull request from a fork whose author is not trusted by the
repository's ``ApprovalPolicy`` (by default: not OWNER, MEMBER or COLLABORATOR, as GitHub's
``author_association`` says) starts nothing; it is recorded as waiting for a maintainer's
approval. Adding the policy's approval label (GitHub sends ``pull_request`` ``labeled``) starts
the run of the pull request's head at that moment. The approval covers that head only: a later
push by the same author waits again until the label is removed and added again, so a maintainer
has looked at every commit that runs.

Re-runs: GitHub's re-run buttons on Gantry's check runs send ``check_run`` (one check) or
``check_suite`` (every check of a commit) with the action ``rerequested``. Each starts one new
run of the pipeline that made the check, for the same commit; its stages come from the cache
when their inputs are unchanged. The check run's ``external_id`` (``pipeline:pr number:flow run
id``) says which pipeline that was; a check without one is not Gantry's and starts nothing.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from clients.github_checks import CheckExternalId, parse_check_external_id
from core.identity import slugify
from core.settings import MERGE_DEPLOYMENT, PR_DEPLOYMENT, RELEASE_DEPLOYMENT
from webhooks.settings import (
    ApprovalPolicies,
    RepositoryAllowlist,
    approval_policies_from_env,
    policy_for,
    repositories_from_env,
)

PR_ACTIONS = frozenset({"opened", "synchronize", "reopened", "ready_for_review"})
RELEASE_ACTIONS = frozenset({"published"})
RERUN_ACTION = "rerequested"
CHECK_EVENTS = ("check_run", "check_suite")
APPROVAL_ACTION = "labeled"
WAITING = "waiting for a maintainer's approval"
Pipeline = Literal["pr", "merge", "release"]

# SHA-1 object names, or SHA-256 ones for repositories that use them.
Sha = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")]
REPO_NAME = r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$"
RepoName = Annotated[str, StringConstraints(pattern=REPO_NAME)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")
M = TypeVar("M", bound=BaseModel)


class PayloadError(ValueError):
    """A signed payload of a known event lacks a field we use, or has the wrong type."""


class _Fields(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Repository(_Fields):
    full_name: RepoName
    # GitHub's numeric id: with the full name, the identity runs and candidates are bound to.
    id: int = Field(gt=0)
    default_branch: Text | None = None


class HeadRepository(_Fields):
    full_name: RepoName


class Ref(_Fields):
    ref: Text
    sha: Sha
    repo: HeadRepository | None  # null when the fork was deleted


class PullRequest(_Fields):
    state: Text = "open"
    draft: bool = False
    # Absent (never seen from GitHub) counts as untrusted: the gate fails closed.
    author_association: Text | None = None
    head: Ref
    base: Ref


class Label(_Fields):
    name: Text


class PullRequestEvent(_Fields):
    action: Text
    number: int = Field(gt=0)
    pull_request: PullRequest
    repository: Repository
    label: Label | None = None  # the label added, on "labeled"


class PushEvent(_Fields):
    ref: Text
    after: Sha
    deleted: bool = False
    repository: Repository


class Release(_Fields):
    tag_name: Text


class Sender(_Fields):
    login: Text


class ReleaseEvent(_Fields):
    action: Text
    release: Release
    repository: Repository
    sender: Sender | None = None


class CheckRepository(_Fields):
    # The Checks API's short repository: GitHub's id, no full name.
    id: int = Field(gt=0)


class CheckRef(_Fields):
    ref: Text
    sha: Sha
    repo: CheckRepository


class CheckPullRequest(_Fields):
    """A pull request as the Checks API lists it (only those of the repository itself)."""

    number: int = Field(gt=0)
    head: CheckRef
    base: CheckRef


class CheckSuite(_Fields):
    head_branch: Text | None = None  # null for some suites (a fork's push, a deleted branch)
    head_sha: Sha
    pull_requests: list[CheckPullRequest] = []


class CheckRun(_Fields):
    head_sha: Sha
    external_id: str | None = None
    check_suite: CheckSuite
    pull_requests: list[CheckPullRequest] = []


class CheckRunEvent(_Fields):
    action: Text
    check_run: CheckRun
    repository: Repository


class CheckSuiteEvent(_Fields):
    action: Text
    check_suite: CheckSuite
    repository: Repository


class PipelineRequest(BaseModel):
    """A flow run to create: the deployment, its parameters, and how to find it later."""

    model_config = ConfigDict(frozen=True)

    pipeline: Pipeline
    deployment: str
    parameters: dict[str, Any]
    run_name: str
    tags: list[str]
    idempotency_key: str
    repository_name: str
    pr_number: int | None = None


class Ignored(BaseModel):
    """A delivery that starts nothing, and why (answered to GitHub, kept in the store)."""

    reason: str


def tag_value(text: str, max_length: int = 100) -> str:
    """A tag-safe rendering of untrusted text: no spaces, quotes or shell metacharacters."""
    return _TAG_UNSAFE.sub("-", text).strip("-")[:max_length] or "unknown"


def _parse(model: type[M], payload: dict[str, Any]) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        # Field paths only: the offending values are untrusted and may be huge.
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
        raise PayloadError(
            f"{model.__name__} payload has missing or invalid fields: " + ", ".join(fields[:10])
        ) from None


def action_of(payload: dict[str, Any]) -> str | None:
    action = payload.get("action")
    return action[:100] if isinstance(action, str) else None


def _not_served(
    payload: dict[str, Any], repositories: RepositoryAllowlist | None
) -> Ignored | None:
    """Why a delivery of a repository off the allowlist starts nothing (None: it is on it)."""
    repository = payload.get("repository")
    name = repository.get("full_name") if isinstance(repository, dict) else None
    if not isinstance(name, str) or not re.fullmatch(REPO_NAME, name):
        # A malformed name is a payload error, whoever it names: the event's parsing says so.
        return None
    if repositories is not None and repositories.allows(name):
        return None
    return Ignored(
        reason=f"repository {tag_value(name)} is not served by this receiver "
        "(not in GANTRY_WEBHOOK_REPOSITORIES)"
    )


def map_event(
    event: str,
    delivery_id: str,
    payload: dict[str, Any],
    approvals: ApprovalPolicies | None = None,
    repositories: RepositoryAllowlist | None = None,
) -> PipelineRequest | Ignored:
    """The run this delivery asks for, or why it asks for none; PayloadError if malformed.

    ``approvals`` are the per-repository approval policies; by default ``GANTRY_WEBHOOK_APPROVAL``.
    ``repositories`` is the allowlist; by default ``GANTRY_WEBHOOK_REPOSITORIES`` (unset: none).
    """
    if event in ("pull_request", "push", "release", *CHECK_EVENTS):
        allowlist = repositories_from_env() if repositories is None else repositories
        refused = _not_served(payload, allowlist)
        if refused is not None:
            return refused
    if event == "pull_request":
        action = action_of(payload)
        if action == APPROVAL_ACTION:
            return _approval(_parse(PullRequestEvent, payload), delivery_id, approvals)
        if action not in PR_ACTIONS:
            return Ignored(reason=f"pull_request action {tag_value(str(action))} starts nothing")
        event_model = _parse(PullRequestEvent, payload)
        waiting = _waiting(event_model, approvals)
        return waiting or _pull_request(event_model, delivery_id)
    if event == "push":
        return _push(_parse(PushEvent, payload), delivery_id)
    if event == "release":
        action = action_of(payload)
        if action not in RELEASE_ACTIONS:
            return Ignored(reason=f"release action {tag_value(str(action))} starts nothing")
        return _release(_parse(ReleaseEvent, payload), delivery_id)
    if event in CHECK_EVENTS:
        action = action_of(payload)
        if action != RERUN_ACTION:
            # created, completed, requested, requested_action: Gantry makes its checks itself.
            return Ignored(reason=f"{event} action {tag_value(str(action))} starts nothing")
        if event == "check_run":
            return _check_run_rerun(_parse(CheckRunEvent, payload), delivery_id)
        return _check_suite_rerun(_parse(CheckSuiteEvent, payload), delivery_id)
    return Ignored(reason=f"event {tag_value(event)} starts nothing")


def _tags(pipeline: Pipeline, repository_name: str, delivery_id: str) -> list[str]:
    return [
        "gantry",
        f"pipeline:{pipeline}",
        f"repo:{repository_name}",
        f"delivery:{tag_value(delivery_id)}",
    ]


def _is_fork(event: PullRequestEvent) -> bool:
    # A head in another repository, or whose repository was deleted, is a fork: no secrets.
    head = event.pull_request.head.repo
    return head is None or head.full_name.lower() != event.repository.full_name.lower()


def _waiting(event: PullRequestEvent, approvals: ApprovalPolicies | None) -> Ignored | None:
    """Why this pull request waits for a maintainer, or None when it may run now."""
    if not _is_fork(event):
        # Only people with write access can push a branch to the base repository itself.
        return None
    policy = policy_for(
        approval_policies_from_env() if approvals is None else approvals,
        event.repository.full_name,
    )
    association = event.pull_request.author_association
    if policy.trusts(association):
        return None
    return Ignored(
        reason=(
            f"{WAITING}: a fork pull request by a {tag_value(str(association or 'unknown'))} "
            f"author runs once a maintainer adds the label {policy.approval_label!r} "
            "(remove and add it again to approve a newer push)"
        )
    )


def _approval(
    event: PullRequestEvent, delivery_id: str, approvals: ApprovalPolicies | None
) -> PipelineRequest | Ignored:
    """A label was added: the approval label on a waiting pull request starts its head's run."""
    policy = policy_for(
        approval_policies_from_env() if approvals is None else approvals,
        event.repository.full_name,
    )
    if event.label is None or event.label.name != policy.approval_label:
        return Ignored(reason="pull_request action labeled starts nothing (not the approval label)")
    if event.pull_request.state != "open":
        return Ignored(reason="the approval label on a closed pull request starts nothing")
    if _waiting(event, approvals) is None:
        # A trusted author's pull request already ran on its push; labelling it is not a push.
        return Ignored(reason="the approval label starts nothing: this pull request needs none")
    # GitHub lets only people with triage access or more add labels: that is the approval.
    return _pull_request(event, delivery_id, approved=True)


def _pull_request(
    event: PullRequestEvent, delivery_id: str, approved: bool = False
) -> PipelineRequest | Ignored:
    pr = event.pull_request
    if pr.draft and event.action != "ready_for_review":
        return Ignored(reason="draft pull request: it runs once marked ready for review")
    return _pr_request(
        event.repository,
        event.number,
        pr.head.sha,
        pr.head.ref,
        _is_fork(event),
        delivery_id,
        approved=approved,
    )


def _pr_request(
    repo: Repository,
    number: int,
    sha: str,
    head_ref: str | None,
    fork: bool,
    delivery_id: str,
    *,
    approved: bool = False,
    rerun: bool = False,
) -> PipelineRequest:
    """A run of the ``pr`` deployment (the parameters of flows/pipelines/pr.py)."""
    base_name = repo.full_name
    return PipelineRequest(
        pipeline="pr",
        deployment=PR_DEPLOYMENT,
        parameters={
            # The base repository is cloned from the worker's Git host (never a URL from the
            # payload); a fork's head is fetched from it as refs/pull/N/head.
            "repository": None,
            "sha": sha,
            "pr_number": number,
            "head_ref": head_ref,
            "fork": fork,
            "repository_name": base_name,
            "repository_id": repo.id,
        },
        run_name=f"pr-{number}-{sha[:7]}" + ("-rerun" if rerun else ""),
        tags=[
            *_tags("pr", base_name, delivery_id),
            f"pr:{number}",
            *(["approved"] if approved else []),
            *(["rerun"] if rerun else []),
        ],
        idempotency_key=delivery_id,
        repository_name=base_name,
        pr_number=number,
    )


def _default_branch(repo: Repository, model: str) -> str:
    if repo.default_branch is None:
        raise PayloadError(
            f"{model} payload has missing or invalid fields: repository.default_branch"
        )
    return repo.default_branch


def _push(event: PushEvent, delivery_id: str) -> PipelineRequest | Ignored:
    repo = event.repository
    if event.deleted or set(event.after) == {"0"}:
        return Ignored(reason="a deleted ref starts nothing")
    if event.ref.startswith("refs/tags/"):
        return Ignored(reason="a pushed tag starts nothing (releases do)")
    if event.ref != f"refs/heads/{_default_branch(repo, 'PushEvent')}":
        return Ignored(reason="a push to a branch other than the default starts nothing")
    return _merge_request(repo, event.after, delivery_id)


def _merge_request(
    repo: Repository, sha: str, delivery_id: str, *, rerun: bool = False
) -> PipelineRequest:
    """A run of the ``merge`` deployment (the parameters of flows/pipelines/merge.py)."""
    branch = _default_branch(repo, "merge")
    return PipelineRequest(
        pipeline="merge",
        deployment=MERGE_DEPLOYMENT,
        parameters={
            "repository": None,
            "sha": sha,
            "ref": branch,
            "repository_name": repo.full_name,
            "repository_id": repo.id,
        },
        run_name=f"merge-{slugify(branch, 30)}-{sha[:7]}" + ("-rerun" if rerun else ""),
        tags=[*_tags("merge", repo.full_name, delivery_id), *(["rerun"] if rerun else [])],
        idempotency_key=delivery_id,
        repository_name=repo.full_name,
    )


def _release(event: ReleaseEvent, delivery_id: str) -> PipelineRequest:
    repo = event.repository
    who = f"github:{event.sender.login}" if event.sender else "github"
    tag = event.release.tag_name
    return PipelineRequest(
        pipeline="release",
        deployment=RELEASE_DEPLOYMENT,
        parameters={
            "repository_name": repo.full_name,
            "repository_id": repo.id,
            "candidate_id": None,
            "tag": tag,
            "triggered_by": who,
        },
        run_name=f"release-{slugify(tag, 40)}",
        tags=_tags("release", repo.full_name, delivery_id),
        idempotency_key=delivery_id,
        repository_name=repo.full_name,
    )


def _check_origin(external_id: str | None) -> CheckExternalId | None:
    """Which Gantry pipeline run made a check run; None for any other check run."""
    try:
        origin = parse_check_external_id(external_id or "")
    except ValueError:
        return None
    return origin if origin.pipeline in ("pr", "merge", "release") else None


def _check_run_rerun(event: CheckRunEvent, delivery_id: str) -> PipelineRequest | Ignored:
    """One check's re-run button: the pipeline that made it runs again for its commit."""
    check = event.check_run
    origin = _check_origin(check.external_id)
    if origin is None:
        return Ignored(reason="not a Gantry check run")
    if origin.pipeline == "release":
        return Ignored(reason="a release is re-run with `gantry release`, where it is approved")
    repo = event.repository
    if origin.pipeline == "merge":
        if check.check_suite.head_branch != _default_branch(repo, "CheckRunEvent"):
            return Ignored(reason="a merge check off the default branch starts nothing")
        return _merge_request(repo, check.head_sha, delivery_id, rerun=True)
    number = origin.pr_number
    if number is None:  # a PR's check names its PR: this one is not Gantry's
        return Ignored(reason="not a Gantry check run")
    listed = next((pr for pr in check.pull_requests if pr.number == number), None)
    return _pr_rerun(
        repo, number, check.head_sha, listed, check.check_suite.head_branch, delivery_id
    )


def _check_suite_rerun(event: CheckSuiteEvent, delivery_id: str) -> PipelineRequest | Ignored:
    """A commit's "re-run all checks": its merge run on the default branch, else its PR run."""
    suite = event.check_suite
    repo = event.repository
    if suite.head_branch == _default_branch(repo, "CheckSuiteEvent"):
        return _merge_request(repo, suite.head_sha, delivery_id, rerun=True)
    if suite.pull_requests:
        first = suite.pull_requests[0]
        return _pr_rerun(repo, first.number, suite.head_sha, first, suite.head_branch, delivery_id)
    # The Checks API lists no fork pull request, and a suite says nothing else of its PR.
    return Ignored(
        reason="a fork's pull request (GitHub names none in a check suite): "
        "use the re-run button of one check"
    )


def _pr_rerun(
    repo: Repository,
    number: int,
    sha: str,
    listed: CheckPullRequest | None,
    head_branch: str | None,
    delivery_id: str,
) -> PipelineRequest:
    # GitHub lists only pull requests within the repository: one it leaves out is a fork's.
    fork = listed is None or listed.head.repo.id != listed.base.repo.id
    head_ref = listed.head.ref if listed is not None else head_branch
    # No approval gate (_waiting): only people with write access see a re-run button, and
    # only an app installed on the repository may ask for one through the API. The commit
    # already ran once, as approved or trusted; the rerequest approves it running again.
    return _pr_request(repo, number, sha, head_ref, fork, delivery_id, approved=fork, rerun=True)
