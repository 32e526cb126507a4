"""What a user waits for around a run: a webhook to the first step, the CLI itself.

Measured against the bench's own stack; every figure is a list of samples so the report can
give medians and p90s rather than one lucky (or unlucky) try.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterTags

from bench.repo import STEP_SECONDS
from core.settings import StackSettings

# The bench repository's identity in its deliveries (bench_git_host serves it).
BENCH_REPOSITORY = "bench/repo"
BENCH_REPO_ID = 4242
# Bounded: a run that never starts is reported as missing, not waited on for ever.
FIRST_STEP_DEADLINE = 120.0
RUN_END_DEADLINE = 300.0


def signed(secret: str, body: bytes) -> str:
    """GitHub's X-Hub-Signature-256 for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def command_seconds(argv: Sequence[str], env: dict[str, str], rounds: int) -> list[float]:
    """Wall seconds of ``argv`` run ``rounds`` times, start of the process to its exit."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(
            list(argv), env=env, capture_output=True, check=False, timeout=600
        ).check_returncode()
        samples.append(time.perf_counter() - started)
    return samples


def new_commit(repo: Path, marker: str) -> str:
    """A new commit on ``repo`` whose tree differs (so no stage is cached): its SHA."""
    (repo / "TRIGGER").write_text(marker)
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@gantry.invalid"]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(repo), *identity, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout.strip()

    git("add", "--all")
    git("commit", "--quiet", "-m", f"bench trigger {marker}")
    return git("rev-parse", "HEAD")


def pull_request_body(number: int, sha: str) -> bytes:
    payload = {
        "action": "opened",
        "number": number,
        # No clone URL: the worker clones bench/repo from its Git host.
        "repository": {"full_name": BENCH_REPOSITORY, "id": BENCH_REPO_ID},
        "pull_request": {
            "draft": False,
            "head": {"ref": f"bench-{number}", "sha": sha, "repo": {"full_name": BENCH_REPOSITORY}},
            "base": {"ref": "main", "sha": sha, "repo": {"full_name": BENCH_REPOSITORY}},
        },
    }
    return json.dumps(payload).encode()


async def _first_step_start(delivery: str) -> tuple[uuid.UUID, datetime] | None:
    """The run a delivery started and its first check step's start, once both exist."""
    deadline = time.monotonic() + FIRST_STEP_DEADLINE
    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"delivery:{delivery}"]))
    async with get_client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(flow_run_filter=tagged, limit=1)
            if runs:
                tasks = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id]))
                )
                # A check step, not the checkout: the first moment repository work runs.
                starts = [
                    t.start_time
                    for t in tasks
                    if t.start_time and t.name.split("-")[0] in STEP_SECONDS
                ]
                if starts:
                    return runs[0].id, min(starts)
            await asyncio.sleep(0.05)
    return None


async def _wait_final(flow_run_id: uuid.UUID) -> None:
    deadline = time.monotonic() + RUN_END_DEADLINE
    async with get_client() as client:
        while time.monotonic() < deadline:
            run = await client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return
            await asyncio.sleep(0.2)


async def webhook_to_first_step(
    settings: StackSettings, secret: str, repo: Path, count: int, warmup: int = 1
) -> dict[str, object]:
    """Seconds from a signed pull_request delivery to its run's first check step running.

    ``warmup + count`` deliveries, one at a time (each run ends before the next delivery, so
    every sample sees an idle stack); each is a new commit of a new pull request, so no stage
    is cached and no run supersedes another. The warm-up samples are not counted.
    """
    samples: list[float] = []
    missing = 0
    base = int(time.time()) % 100000
    async with httpx.AsyncClient(timeout=30) as client:
        for index in range(warmup + count):
            sha = new_commit(repo, uuid.uuid4().hex)
            body = pull_request_body(base + index, sha)
            delivery = str(uuid.uuid4())
            sent = datetime.now().astimezone()
            response = await client.post(
                settings.webhook_url,
                content=body,
                headers={
                    "X-GitHub-Event": "pull_request",
                    "X-GitHub-Delivery": delivery,
                    "X-Hub-Signature-256": signed(secret, body),
                },
            )
            response.raise_for_status()
            found = await _first_step_start(delivery)
            if found is None:
                missing += 1
                continue
            run_id, started = found
            if index >= warmup:
                samples.append((started - sent).total_seconds())
            await _wait_final(run_id)
    return {"samples": samples, "missing": missing, "warmup": warmup}


def gantry_env(settings: StackSettings) -> dict[str, str]:
    """The environment that points the `gantry` CLI at the bench stack."""
    env = dict(os.environ)
    env["GANTRY_HOME"] = str(settings.home)
    for key in ("prefect_port", "webhook_port", "registry_port", "staging_port", "production_port"):
        env[f"GANTRY_{key.upper()}"] = str(getattr(settings, key))
    return env
