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
