"""Content-addressed step cache: a passing result is re-used when its inputs have not changed.

The key is the git tree hash of the files a step reads (the whole tree, or the `inputs` globs of
gantry.toml) plus everything else that decides the outcome: the step's command, environment and
network, the toolchain it runs on (``[sandbox] image``, else the runner's default) and its
limits. Prefect stores the result (result persistence) and looks it up by this key; it caches
only Completed task runs, and a failed check ends Failed, so a failure is never re-used.

Trust: results are written only by the trusted side. The step's command runs in its sandbox and
reports nothing but its exit code and output; Prefect's result persistence in the worker (or the
in-process flow run) serializes the ``StageResult`` into the worker's own result storage, which
no sandbox can reach. What a fork's run produced may still be wrong on purpose (its gantry.toml
and inputs are the fork's), so its keys are scoped to its own pull request: no other pull
request, no merge and no release run ever computes such a key.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from flows.config import Checks, Sandbox
from flows.steps.sandbox.select import SandboxSettings

# Bump when the meaning of a cached result changes (the runner, the result model, the key).
CACHE_VERSION = "2"
# A passing result is trusted for a week at most: the default toolchain (and the world a test
# reaches) drifts without a commit, and a week bounds how stale a re-used pass can be.
CACHE_EXPIRATION = timedelta(days=7)
# The identity of the default toolchain (the tools the step runner provides when gantry.toml names
# no [sandbox] image). Bump it when that toolchain changes, so no result made with the old one is
# re-used.
DEFAULT_TOOLCHAIN = "gantry-default-toolchain/1"
# The scope of every run that is not a fork's: merge, release, same-repository pull requests.
SHARED_SCOPE = "shared"


class CacheKeyError(RuntimeError):
    """The inputs of a step could not be hashed; the step then runs uncached."""


def _git(workspace: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(workspace), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise CacheKeyError(result.stderr.strip() or f"git {args[0]} failed")
    return result.stdout


def inputs_digest(workspace: Path, inputs: list[str] | None) -> str:
    """The tree hash of the checkout, or a hash of the blob ids the ``inputs`` globs match."""
    if not inputs:
        return _git(workspace, "rev-parse", "HEAD^{tree}").strip()
    pathspecs = [f":(glob){pattern}" for pattern in inputs]
    listing = _git(workspace, "ls-files", "-s", "--", *pathspecs)
    return hashlib.sha256(listing.encode()).hexdigest()


def toolchain_identity(sandbox: Sandbox, runner: str) -> str:
    """The image ``[sandbox]`` names, else the default toolchain's version on this runner."""
    # Each runner provides its own default toolchain (the host's tools locally, an image on
    # Kubernetes): a pass on one says nothing about the other.
    return sandbox.image or f"{DEFAULT_TOOLCHAIN}@{runner}"


def cache_scope(flow_parameters: Mapping[str, Any]) -> str | None:
    """Who may re-use a result of this run: everyone trusted, one fork's pull request, or nobody.

    Read from the pipeline flow's parameters (``fork``, ``pr_number``, the repository), which the
    trusted side sets: the webhook dispatcher from the verified event, or an operator's CLI.
    None (never cached) for a fork's run that names no pull request.
    """
    if not flow_parameters.get("fork"):
        return SHARED_SCOPE
    number = flow_parameters.get("pr_number")
    if not isinstance(number, int) or isinstance(number, bool):
        return None
    repository = flow_parameters.get("repository_name") or flow_parameters.get("repository")
    return f"fork:{repository}#{number}"


def step_key(
    stage: str,
    command: list[str],
    env: Mapping[str, str],
    digest: str,
    *,
    toolchain: str = DEFAULT_TOOLCHAIN,
    sandbox: Mapping[str, Any] | None = None,
    scope: str = SHARED_SCOPE,
) -> str:
    """The key of one step; ``sandbox`` is what else shapes its run (network, limits)."""
    material = json.dumps(
        {
            "v": CACHE_VERSION,
            "stage": stage,
            "command": command,
            "env": dict(env),
            "inputs": digest,
            "toolchain": toolchain,
            "sandbox": dict(sandbox or {}),
            "scope": scope,
        },
        sort_keys=True,
    )
    return f"gantry-{stage}-{hashlib.sha256(material.encode()).hexdigest()}"


def check_key(
    stage: str,
    checks: Checks,
    sandbox: Sandbox,
    workspace: Path,
    flow_parameters: Mapping[str, Any],
) -> str | None:
    """The cache key of one check stage; None (never cached) when it cannot be computed."""
    step = checks.step(stage)
    if step is None:
        return None
    scope = cache_scope(flow_parameters)
    if scope is None:
        return None
    try:
        digest = inputs_digest(workspace, step.inputs)
    except (CacheKeyError, OSError, subprocess.TimeoutExpired):
        return None
    # The report a step declares is part of its result (the annotations parsed from it): a pass
    # cached before the report was declared carries none, so it must not be re-used.
    report = step.report.model_dump() if step.report is not None else None
    shape = {"network": step.network, "report": report, **sandbox.model_dump(exclude={"image"})}
    toolchain = toolchain_identity(sandbox, SandboxSettings().runner)
    return step_key(
        stage, step.command, step.env, digest, toolchain=toolchain, sandbox=shape, scope=scope
    )


class CheckCachePolicy(CachePolicy):
    """The cache policy of the check task: content, configuration, toolchain and trust scope."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        del task_ctx, kwargs
        return check_key(
            inputs["stage"],
            inputs["checks"],
            inputs["sandbox"],
            Path(inputs["workspace"]),
            flow_parameters,
        )


CHECK_CACHE_POLICY = CheckCachePolicy()
