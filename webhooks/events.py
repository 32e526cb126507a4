"""From a GitHub event to the pipeline run it asks for, if any.

Payloads are parsed into models of just the fields used: tolerant of everything else GitHub
sends, strict (no coercion) on these. Branch names, titles and messages stay data: they travel
as typed flow parameters; anything used in a run name or tag is slugged first.

Draft pull requests start nothing until they are marked ready for review (``ready_for_review``);
pushes to a draft PR's branch after that run as usual.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from core.identity import slugify
from core.settings import MERGE_DEPLOYMENT, PR_DEPLOYMENT, RELEASE_DEPLOYMENT

PR_ACTIONS = frozenset({"opened", "synchronize", "reopened", "ready_for_review"})
RELEASE_ACTIONS = frozenset({"published"})
Pipeline = Literal["pr", "merge", "release"]

# SHA-1 object names, or SHA-256 ones for repositories that use them.
Sha = Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")]
RepoName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")
M = TypeVar("M", bound=BaseModel)


class PayloadError(ValueError):
    """A signed payload of a known event lacks a field we use, or has the wrong type."""


class _Fields(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Repository(_Fields):
    full_name: RepoName
    clone_url: Text
    default_branch: Text | None = None


class HeadRepository(_Fields):
    full_name: RepoName


class Ref(_Fields):
    ref: Text
    sha: Sha
    repo: HeadRepository | None  # null when the fork was deleted


class PullRequest(_Fields):
    draft: bool = False
    head: Ref
    base: Ref


class PullRequestEvent(_Fields):
    action: Text
    number: int = Field(gt=0)
    pull_request: PullRequest
    repository: Repository


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


def map_event(event: str, delivery_id: str, payload: dict[str, Any]) -> PipelineRequest | Ignored:
    """The run this delivery asks for, or why it asks for none; PayloadError if malformed."""
    if event == "pull_request":
        action = action_of(payload)
        if action not in PR_ACTIONS:
            return Ignored(reason=f"pull_request action {tag_value(str(action))} starts nothing")
        return _pull_request(_parse(PullRequestEvent, payload), delivery_id)
    if event == "push":
        return _push(_parse(PushEvent, payload), delivery_id)
    if event == "release":
        action = action_of(payload)
        if action not in RELEASE_ACTIONS:
            return Ignored(reason=f"release action {tag_value(str(action))} starts nothing")
        return _release(_parse(ReleaseEvent, payload), delivery_id)
    return Ignored(reason=f"event {tag_value(event)} starts nothing")


def _tags(pipeline: Pipeline, repository_name: str, delivery_id: str) -> list[str]:
    return [
        "gantry",
        f"pipeline:{pipeline}",
        f"repo:{repository_name}",
        f"delivery:{tag_value(delivery_id)}",
    ]


def _pull_request(event: PullRequestEvent, delivery_id: str) -> PipelineRequest | Ignored:
    pr = event.pull_request
    if pr.draft and event.action != "ready_for_review":
        return Ignored(reason="draft pull request: it runs once marked ready for review")
    base_name = event.repository.full_name
    # A head in another repository, or whose repository was deleted, is a fork: no secrets.
    fork = pr.head.repo is None or pr.head.repo.full_name.lower() != base_name.lower()
    sha = pr.head.sha
    return PipelineRequest(
        pipeline="pr",
        deployment=PR_DEPLOYMENT,
        parameters={
            # The base repository is cloned; a fork's head is fetched as refs/pull/N/head.
            "repository": event.repository.clone_url,
            "sha": sha,
            "pr_number": event.number,
            "head_ref": pr.head.ref,
            "fork": fork,
            "repository_name": base_name,
        },
        run_name=f"pr-{event.number}-{sha[:7]}",
        tags=[*_tags("pr", base_name, delivery_id), f"pr:{event.number}"],
        idempotency_key=delivery_id,
        repository_name=base_name,
        pr_number=event.number,
    )


def _push(event: PushEvent, delivery_id: str) -> PipelineRequest | Ignored:
    repo = event.repository
    if event.deleted or set(event.after) == {"0"}:
        return Ignored(reason="a deleted ref starts nothing")
    if event.ref.startswith("refs/tags/"):
        return Ignored(reason="a pushed tag starts nothing (releases do)")
    if repo.default_branch is None:
        raise PayloadError(
            "PushEvent payload has missing or invalid fields: repository.default_branch"
        )
    if event.ref != f"refs/heads/{repo.default_branch}":
        return Ignored(reason="a push to a branch other than the default starts nothing")
    return PipelineRequest(
        pipeline="merge",
        deployment=MERGE_DEPLOYMENT,
        parameters={
            "repository": repo.clone_url,
            "sha": event.after,
            "ref": repo.default_branch,
            "repository_name": repo.full_name,
        },
        run_name=f"merge-{slugify(repo.default_branch, 30)}-{event.after[:7]}",
        tags=_tags("merge", repo.full_name, delivery_id),
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
            "candidate_id": None,
            "tag": tag,
            "triggered_by": who,
        },
        run_name=f"release-{slugify(tag, 40)}",
        tags=_tags("release", repo.full_name, delivery_id),
        idempotency_key=delivery_id,
        repository_name=repo.full_name,
    )
