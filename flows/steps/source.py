"""Where a run's code comes from: clone URLs built from the identity, tags and branch heads.

A webhook-triggered run names its repository by identity only; its clone URL is the worker's
``GANTRY_GIT_BASE_URL`` plus ``owner/name``, never a URL from the payload. An operator's own
``gantry run --repo PATH_OR_URL`` names the location itself (and the checkout still decides
which schemes it fetches from).
"""

from __future__ import annotations

from blocks.github import load_github_credentials
from clients.github import GitHubClient
from clients.github_errors import GitHubError, GitHubNotFoundError
from core.identity import RepositoryIdentity
from flows.logs import step_logger
from flows.steps.checkout import CheckoutError, SourceSettings, source_settings, tag_commit_in


class SourceError(CheckoutError):
    """The repository's host could not say what a tag or branch names."""


def clone_url(identity: RepositoryIdentity, settings: SourceSettings | None = None) -> str:
    """``https://github.com/owner/name.git`` (or ``<file base>/owner/name`` for a local host)."""
    if not identity.on_github:
        raise CheckoutError(f"{identity.full_name!r} is not an owner/name repository")
    base = (settings or source_settings()).git_base_url
    # A file host keeps plain folders, which git finds without the ".git" suffix.
    suffix = ".git" if base.startswith("https://") else ""
    return f"{base}{identity.full_name}{suffix}"


def run_source(repository: str | None, identity: RepositoryIdentity) -> str:
    """What a run checks out: the operator's path or URL when given, else the built URL."""
    if repository:
        if identity.id is not None:
            # A GitHub id vouches for a repository on the Git host, never for another URL.
            raise CheckoutError(
                "a run that names a GitHub repository id is cloned from the configured Git "
                "host only; do not pass a repository location with it"
            )
        return repository
    return clone_url(identity)


async def _github() -> GitHubClient | None:
    try:
        credentials = await load_github_credentials()
    except ValueError as exc:
        step_logger("source").warning("GitHub credentials are invalid: %s", exc)
        return None
    return GitHubClient.from_credentials(credentials) if credentials is not None else None


async def tag_commit(identity: RepositoryIdentity, source: str, tag: str) -> str:
    """The commit ``tag`` names: asked of GitHub for a repository there (when credentials are
    configured), else read with git from a fresh fetch of the tag."""
    if source.startswith("https://") and identity.on_github:
        client = await _github()
        if client is not None:
            async with client:
                try:
                    return await client.tag_commit(identity.full_name, tag)
                except GitHubNotFoundError as exc:
                    raise SourceError(f"tag {tag!r} not found in {identity.full_name}") from exc
                except GitHubError as exc:
                    raise SourceError(f"GitHub could not resolve tag {tag!r}: {exc}") from exc
    return await tag_commit_in(source, tag)


async def stale_push(identity: RepositoryIdentity, branch: str, sha: str) -> str | None:
    """Why ``sha`` must not be deployed as the head of ``branch``, or None when it may.

    Asked of GitHub, when credentials are configured: a push whose commit is no longer the
    branch's head (an old delivery replayed, or a newer push already there) is stale. Without
    credentials nothing can be asked, and that is logged. SourceError when GitHub cannot answer.
    """
    if not identity.on_github:
        return None
    client = await _github()
    if client is None:
        step_logger("source").warning(
            "no GitHub credentials: cannot confirm %s is the head of %s", sha[:12], branch
        )
        return None
    async with client:
        try:
            head = await client.branch_head(identity.full_name, branch)
        except GitHubError as exc:
            raise SourceError(
                f"cannot confirm {sha[:12]} is the head of {branch}: {exc}; nothing deployed"
            ) from exc
    if head == sha:
        return None
    return (
        f"{sha[:12]} is no longer the head of {branch} ({head[:12]} is): a replayed or "
        "superseded push deploys nothing"
    )
