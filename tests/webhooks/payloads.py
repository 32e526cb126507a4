"""Realistic GitHub webhook payloads (the documented shapes, with fields we do not use)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from webhooks.settings import RepositoryAllowlist
from webhooks.signature import sign

SECRET = "test-webhook-secret-0123456789abcdef"
OLD_SECRET = "previous-webhook-secret-fedcba9876543210"
BASE = "acme/api"
SHA = "a" * 40
SHA2 = "b" * 40
ZEROS = "0" * 40
REPOSITORY_ID = 1296269
# What the receivers under test serve: every repository of the acme organization.
SERVED = "acme/*"
ALLOWLIST = RepositoryAllowlist.parse(SERVED)


def repository(full_name: str = BASE, default_branch: str = "main") -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {
        "id": REPOSITORY_ID,
        "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": {"login": owner, "id": 1, "type": "Organization"},
        "html_url": f"https://github.com/{full_name}",
        "clone_url": f"https://github.com/{full_name}.git",
        "ssh_url": f"git@github.com:{full_name}.git",
        "fork": False,
        "default_branch": default_branch,
        "created_at": "2011-01-26T19:01:12Z",
    }


def sender(login: str = "octocat") -> dict[str, Any]:
    return {"login": login, "id": 583231, "type": "User", "site_admin": False}


def pull_request(
    action: str = "opened",
    number: int = 42,
    sha: str = SHA,
    head_ref: str = "feature/x",
    head_repo: str | None = BASE,
    draft: bool = False,
    author_association: str = "MEMBER",
    label: str | None = None,
    state: str = "open",
) -> dict[str, Any]:
    head_repository = None if head_repo is None else repository(head_repo)
    if head_repository is not None and head_repo != BASE:
        head_repository["fork"] = True
    payload: dict[str, Any] = {
        "action": action,
        "number": number,
        "pull_request": {
            "url": f"https://api.github.com/repos/{BASE}/pulls/{number}",
            "id": 1,
            "number": number,
            "state": state,
            "locked": False,
            "title": "Add a feature; rm -rf / $(id)",
            "body": "`echo pwned`",
            "draft": draft,
            "merged": False,
            "user": sender(),
            "author_association": author_association,
            "labels": [] if label is None else [{"id": 1, "name": label, "color": "0e8a16"}],
            "head": {
                "label": f"x:{head_ref}",
                "ref": head_ref,
                "sha": sha,
                "repo": head_repository,
            },
            "base": {"label": "acme:main", "ref": "main", "sha": SHA2, "repo": repository()},
        },
        "repository": repository(),
        "sender": sender(),
    }
    if action == "labeled" and label is not None:
        payload["label"] = {"id": 1, "name": label, "color": "0e8a16", "default": False}
    if action == "synchronize":
        payload["before"] = SHA2
        payload["after"] = sha
    return payload


def push(
    ref: str = "refs/heads/main",
    after: str = SHA,
    deleted: bool = False,
    default_branch: str = "main",
) -> dict[str, Any]:
    repo = repository(default_branch=default_branch)
    repo["created_at"] = 1296068472  # an epoch integer in push payloads
    return {
        "ref": ref,
        "before": SHA2,
        "after": after,
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{BASE}/compare/bbbbbbb...aaaaaaa",
        "commits": [] if deleted else [{"id": after, "message": "Merge pull request #42"}],
        "head_commit": None if deleted else {"id": after, "timestamp": "2024-01-01T00:00:00Z"},
        "repository": repo,
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "sender": sender(),
    }


def release(action: str = "published", tag: str = "v1.2.3") -> dict[str, Any]:
    return {
        "action": action,
        "release": {
            "id": 1,
            "tag_name": tag,
            "target_commitish": "main",
            "name": tag,
            "draft": action == "created",
            "prerelease": False,
        },
        "repository": repository(),
        "sender": sender("releaser"),
    }


FLOW_RUN_ID = "5f0c2f4e-8a4b-4c1d-9d3e-2b7a9c1e0f11"
APP = {"id": 1001, "slug": "gantry", "name": "Gantry", "owner": {"login": "acme", "id": 1}}
FORK_REPOSITORY_ID = 7040


def check_pull_request(
    number: int = 42,
    sha: str = SHA,
    head_ref: str = "feature/x",
    head_repo_id: int = REPOSITORY_ID,
) -> dict[str, Any]:
    """A pull request as the Checks API lists it: short repositories (id, url, name only)."""

    def short(repo_id: int) -> dict[str, Any]:
        return {
            "id": repo_id,
            "url": f"https://api.github.com/repositories/{repo_id}",
            "name": "api",
        }

    return {
        "url": f"https://api.github.com/repos/{BASE}/pulls/{number}",
        "id": 1934,
        "number": number,
        "head": {"ref": head_ref, "sha": sha, "repo": short(head_repo_id)},
        "base": {"ref": "main", "sha": SHA2, "repo": short(REPOSITORY_ID)},
    }


def _check_suite(
    head_branch: str | None, sha: str, pull_requests: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": 118578147,
        "node_id": "MDEwOkNoZWNrU3VpdGUxMTg1NzgxNDc=",
        "head_branch": head_branch,
        "head_sha": sha,
        "status": "completed",
        "conclusion": "failure",
        "url": f"https://api.github.com/repos/{BASE}/check-suites/118578147",
        "before": SHA2,
        "after": sha,
        "pull_requests": pull_requests,
        "app": APP,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:05:00Z",
    }


def check_run(
    action: str = "rerequested",
    external_id: str | None = f"pr:42:{FLOW_RUN_ID}",
    sha: str = SHA,
    head_branch: str | None = "feature/x",
    pull_requests: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``check_run`` delivery for one of Gantry's checks (by default: PR 42's lint)."""
    listed = [check_pull_request(sha=sha)] if pull_requests is None else pull_requests
    payload: dict[str, Any] = {
        "action": action,
        "check_run": {
            "id": 128620228,
            "node_id": "MDg6Q2hlY2tSdW4xMjg2MjAyMjg=",
            "head_sha": sha,
            "external_id": external_id,
            "url": f"https://api.github.com/repos/{BASE}/check-runs/128620228",
            "html_url": f"https://github.com/{BASE}/runs/128620228",
            "details_url": "https://prefect.example.com/runs/flow-run/" + FLOW_RUN_ID,
            "status": "completed",
            "conclusion": "failure",
            "started_at": "2024-01-01T00:00:00Z",
            "completed_at": "2024-01-01T00:05:00Z",
            "output": {"title": "lint failed", "summary": "1 error", "text": None},
            "name": "gantry/lint",
            "check_suite": _check_suite(head_branch, sha, listed),
            "app": APP,
            "pull_requests": listed,
        },
        "repository": repository(),
        "sender": sender(),
        "installation": {
            "id": 2311213,
            "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMjMxMTIxMw==",
        },
    }
    if action == "requested_action":
        payload["requested_action"] = {"identifier": "fix"}
    return payload


def check_suite(
    action: str = "rerequested",
    head_branch: str | None = "feature/x",
    sha: str = SHA,
    pull_requests: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``check_suite`` delivery: every check of one commit (by default: PR 42's head)."""
    listed = [check_pull_request(sha=sha)] if pull_requests is None else pull_requests
    return {
        "action": action,
        "check_suite": {
            **_check_suite(head_branch, sha, listed),
            "latest_check_runs_count": 5,
            "check_runs_url": f"https://api.github.com/repos/{BASE}/check-suites/118578147/check-runs",
            "head_commit": {
                "id": sha,
                "message": "Add a feature",
                "timestamp": "2024-01-01T00:00:00Z",
            },
        },
        "repository": repository(),
        "sender": sender(),
        "installation": {"id": 2311213},
    }


def ping() -> dict[str, Any]:
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": 7,
        "hook": {"type": "Repository", "id": 7, "events": ["push", "pull_request"]},
        "repository": repository(),
        "sender": sender(),
    }


def new_delivery_id() -> str:
    return str(uuid.uuid4())


def signed(
    event: str,
    payload: dict[str, Any] | bytes,
    delivery_id: str | None = None,
    secret: str = SECRET,
) -> tuple[bytes, dict[str, str]]:
    """A body and the headers GitHub sends with it."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/abc123",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or new_delivery_id(),
        "X-GitHub-Hook-ID": "7",
        "X-Hub-Signature-256": sign(secret, body),
    }
    return body, headers
