"""Content-addressed step cache: a passing result is re-used when its inputs have not changed.

The key is the git tree hash of the files a step reads (the whole tree, or the `inputs` globs of
gantry.toml) plus the step's own configuration. Prefect stores the result (result persistence) and
looks it up by this key; it caches only Completed task runs, and a failed check ends Failed, so a
failure is never re-used.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from prefect.context import TaskRunContext

from flows.config import Checks

# Bump when the meaning of a cached result changes (the runner, the result model).
CACHE_VERSION = "1"


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


def step_key(stage: str, command: list[str], env: dict[str, str], digest: str) -> str:
    material = json.dumps(
        {"v": CACHE_VERSION, "stage": stage, "command": command, "env": env, "inputs": digest},
        sort_keys=True,
    )
    return f"gantry-{stage}-{hashlib.sha256(material.encode()).hexdigest()}"


def check_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Prefect ``cache_key_fn`` of the check task; None (never cached) when not computable."""
    del context
    stage: str = parameters["stage"]
    checks: Checks = parameters["checks"]
    workspace = Path(parameters["workspace"])
    step = checks.step(stage)
    if step is None:
        return None
    try:
        digest = inputs_digest(workspace, step.inputs)
    except (CacheKeyError, OSError, subprocess.TimeoutExpired):
        return None
    return step_key(stage, step.command, step.env, digest)
