"""Checkout: the exact commit of a repository in a workspace of its own, removed afterwards.

Where a repository may come from is the worker's decision, not a run's: ``https`` always, and
``file`` (a ``file://`` URL or a local path) only when the operator enables it with
``GANTRY_ALLOW_FILE_REPOSITORIES=1`` (the local stack does, for its own repositories).
Anything else (``http``, ``ssh``, ``git``, ``ext::``) is refused before git runs.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from prefect import task
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.logs import step_logger
from flows.steps.proc import ProcResult, run_argv, step_env

SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# A tag name git accepts, without option-like or revision-syntax forms.
TAG_RE = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)[A-Za-z0-9._/+-]{1,200}(?<![./])$")
GIT_TIMEOUT = 300.0
ALLOW_FILE_ENV = "GANTRY_ALLOW_FILE_REPOSITORIES"


class CheckoutError(RuntimeError):
    """The commit could not be materialized (unknown SHA, unreachable repository)."""


class SourceSettings(BaseSettings):
    """The worker's Git host and whether local repositories may be checked out."""

    model_config = SettingsConfigDict(env_prefix="GANTRY_", extra="ignore")

    # Clone URLs of webhook-triggered runs are this base plus ``owner/name``.
    git_base_url: str = Field(default="https://github.com/")
    allow_file_repositories: bool = False

    @field_validator("git_base_url")
    @classmethod
    def _base_is_a_folder_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.lower()
        if scheme not in ("https", "file") or "://" not in value:
            raise ValueError("GANTRY_GIT_BASE_URL must be an https:// (or file://) URL")
        return value if value.endswith("/") else value + "/"


def source_settings() -> SourceSettings:
    """Read now: a worker's environment is fixed, a test's may change between runs."""
    return SourceSettings()


def validate_repository(repository: str) -> str:
    if not repository or repository.startswith("-") or "\n" in repository or "\0" in repository:
        raise CheckoutError(f"not a repository path or URL: {repository!r}")
    if "::" in repository.split("/", 1)[0]:
        raise CheckoutError(f"git transport not allowed: {repository!r}")
    return repository


def check_source(repository: str, settings: SourceSettings | None = None) -> str:
    """What git may fetch from for ``repository``, or CheckoutError saying why not.

    ``https://`` URLs pass; ``file://`` URLs and local paths pass only when file repositories
    are enabled; every other scheme (and ``host:path``, git's ssh shorthand) is refused.
    """
    validate_repository(repository)
    settings = settings or source_settings()
    scheme = urlsplit(repository).scheme.lower() if "://" in repository else ""
    if scheme == "https":
        return repository
    local = scheme == "file" or (not scheme and ":" not in repository.split("/", 1)[0])
    if not local:
        shown = scheme or "ssh (host:path)"
        raise CheckoutError(
            f"repository scheme {shown!r} is not allowed: only https:// URLs are fetched "
            f"(and file:// URLs or local paths when {ALLOW_FILE_ENV}=1)"
        )
    if not settings.allow_file_repositories:
        raise CheckoutError(
            f"local repositories are not allowed on this worker: {repository!r} is a file "
            f"path or URL; set {ALLOW_FILE_ENV}=1 to allow them"
        )
    if not scheme and Path(repository).is_dir():
        return str(Path(repository).resolve())
    return repository


def validate_sha(sha: str) -> str:
    if not SHA_RE.match(sha):
        raise CheckoutError(f"not a full commit SHA (40 or 64 lowercase hex digits): {sha!r}")
    return sha


def _git_env() -> dict[str, str]:
    # Git itself enforces the same transports (redirects and submodules included).
    protocols = "https:file" if source_settings().allow_file_repositories else "https"
    return step_env(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": protocols,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "gantry",
            "GIT_AUTHOR_EMAIL": "gantry@localhost",
            "GIT_COMMITTER_NAME": "gantry",
            "GIT_COMMITTER_EMAIL": "gantry@localhost",
        }
    )


async def _git(workspace: Path, *args: str) -> ProcResult:
    logger = step_logger("checkout")
    return await run_argv(
        ["git", "-c", "advice.detachedHead=false", *args],
        cwd=workspace,
        timeout=GIT_TIMEOUT,
        logger=logger,
        env=_git_env(),
        prefix="git: ",
    )


def workspaces_root() -> Path:
    from core.settings import StackSettings

    root = StackSettings().state_dir / "workspaces"
    root.mkdir(parents=True, exist_ok=True)
    return root


async def materialize(repository: str, sha: str, workspace: Path) -> None:
    """Fetch exactly ``sha`` from ``repository`` into the empty folder ``workspace``."""
    source = check_source(repository)
    validate_sha(sha)
    init = await _git(workspace, "init", "--quiet")
    if not init.ok:
        raise CheckoutError(f"git init failed: {init.describe()}: {init.tail}")
    # A shallow fetch of the one commit is fastest; servers that refuse to serve an
    # unadvertised SHA get a full fetch of branches and pull request heads instead.
    fetched = await _git(workspace, "fetch", "--quiet", "--depth=1", "--no-tags", source, sha)
    if not fetched.ok:
        full = await _git(
            workspace,
            "fetch",
            "--quiet",
            "--no-tags",
            source,
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/pull/*/head:refs/remotes/pull/*",
        )
        if not full.ok:
            raise CheckoutError(
                f"cannot fetch from {repository}: {full.describe()}: {full.tail.strip()[-500:]}"
            )
    exists = await _git(workspace, "cat-file", "-e", f"{sha}^{{commit}}")
    if not exists.ok:
        raise CheckoutError(f"commit {sha} does not exist in {repository}")
    switched = await _git(workspace, "checkout", "--quiet", "--detach", sha)
    if not switched.ok:
        raise CheckoutError(f"cannot check out {sha}: {switched.tail.strip()[-500:]}")


@contextlib.asynccontextmanager
async def checkout(repository: str, sha: str, name: str = "run") -> AsyncIterator[Path]:
    """A workspace holding ``sha`` of ``repository``; removed when the block exits."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:60]
    workspace = Path(tempfile.mkdtemp(prefix=f"{safe}-", dir=workspaces_root()))
    try:
        await checkout_task(repository, sha, workspace)
        yield workspace
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


@task(name="checkout", task_run_name="checkout", retries=0)
async def checkout_task(repository: str, sha: str, workspace: Path) -> str:
    await materialize(repository, sha, workspace)
    return sha


async def tag_commit_in(repository: str, tag: str) -> str:
    """The commit ``tag`` names in ``repository``, read from a fresh fetch of that tag alone.

    Annotated tags are peeled to their commit; a missing tag is a CheckoutError.
    """
    source = check_source(repository)
    if not TAG_RE.match(tag):
        raise CheckoutError(f"not a tag name: {tag!r}")
    with tempfile.TemporaryDirectory(prefix="tag-", dir=workspaces_root()) as folder:
        workspace = Path(folder)
        init = await _git(workspace, "init", "--quiet", "--bare")
        if not init.ok:
            raise CheckoutError(f"git init failed: {init.describe()}: {init.tail}")
        ref = f"refs/tags/{tag}"
        fetched = await _git(workspace, "fetch", "--quiet", "--no-tags", source, f"+{ref}:{ref}")
        if not fetched.ok:
            raise CheckoutError(f"tag {tag!r} not found in {repository}")
        peeled = await _git(
            workspace, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}"
        )
        lines = peeled.tail.strip().splitlines() if peeled.ok else []
        sha = lines[-1].strip() if lines else ""
        if not SHA_RE.match(sha):
            raise CheckoutError(f"tag {tag!r} of {repository} does not name a commit")
        return sha
