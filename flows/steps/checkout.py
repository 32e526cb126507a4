"""Checkout: the exact commit of a repository in a workspace of its own, removed afterwards."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from prefect import task

from flows.logs import step_logger
from flows.steps.proc import ProcResult, run_argv, step_env

SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
GIT_TIMEOUT = 300.0
# Only transports a repository URL may name; `ext::` and friends would run commands.
GIT_PROTOCOLS = "file:https:http:ssh:git"


class CheckoutError(RuntimeError):
    """The commit could not be materialized (unknown SHA, unreachable repository)."""


def validate_repository(repository: str) -> str:
    if not repository or repository.startswith("-") or "\n" in repository or "\0" in repository:
        raise CheckoutError(f"not a repository path or URL: {repository!r}")
    if "::" in repository.split("/", 1)[0]:
        raise CheckoutError(f"git transport not allowed: {repository!r}")
    return repository


def validate_sha(sha: str) -> str:
    if not SHA_RE.match(sha):
        raise CheckoutError(f"not a full commit SHA (40 or 64 lowercase hex digits): {sha!r}")
    return sha


def _git_env() -> dict[str, str]:
    return step_env(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
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
    validate_repository(repository)
    validate_sha(sha)
    source = repository
    if Path(repository).is_dir():
        source = str(Path(repository).resolve())
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
