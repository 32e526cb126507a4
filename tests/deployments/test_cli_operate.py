"""`gantry runs`, `logs`, `cancel`, `retry` and unwrapped output, against the real local stack."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from deployments.prefect_server import PrefectServer
from deployments.stack import Stack
from tests.plugins.gitrepo import GitRepo, gantry_toml
from tests.plugins.stack import GANTRY, as_json, gantry, stack_environment

PY = sys.executable
# Longer than the 80 columns output to a file used to be wrapped at.
IMAGE = "registry.example.internal:5000/acme/payments-ledger-api@sha256:" + "8d57338a" * 8


def long_line_repo(make_repo: Callable[[str], GitRepo], name: str) -> GitRepo:
    repo = make_repo(name)
    ok = [PY, "-c", "print('ok')"]
    lint = [PY, "-c", f"print('pushed {IMAGE}')"]
    repo.commit({"gantry.toml": gantry_toml(lint=lint, static=ok, unit=ok, integration=ok)})
    return repo


def runs_of(stack: Stack, repo: GitRepo) -> list[dict[str, Any]]:
    result = gantry(stack, "runs", "--repo", str(repo.path), "--json")
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = as_json(result)["runs"]
    return found


@pytest.mark.slow
def test_logs_print_a_finished_runs_step_output_whole_and_retry_reuses_its_stages(
    local_stack: Stack, make_repo: Callable[[str], GitRepo]
) -> None:
    repo = long_line_repo(make_repo, "cli-logs")
    run = gantry(local_stack, "run", "pr", "--repo", str(repo.path), "--sha", "HEAD")
    assert run.returncode == 0, run.stdout + run.stderr
    # Output to a pipe: the first line comes before the stack check, and nothing is wrapped.
    assert run.stderr.splitlines()[0].strip() == "starting the pr pipeline"
    [listed] = runs_of(local_stack, repo)
    assert listed["state"] == "Completed"
    link = f"See the run in the Prefect UI: {listed['url']}"
    assert len(link) > 80 and link in run.stdout.splitlines()

    logs = gantry(local_stack, "logs", listed["name"], "--stage", "lint")
    assert logs.returncode == 0, logs.stderr
    shown = [x for x in logs.stdout.splitlines() if "sha256:" in x]
    assert any(x.endswith(f"[lint] pushed {IMAGE}") for x in shown), logs.stdout
    assert all(IMAGE in x for x in shown), logs.stdout  # never broken across lines
    assert "[unit]" not in logs.stdout  # only the stage asked for

    by_id = as_json(gantry(local_stack, "logs", listed["id"], "--json"))
    assert by_id["state"] == "Completed"
    lines = {(x["stage"], x["message"]) for x in by_id["lines"]}
    assert ("lint", f"[lint] pushed {IMAGE}") in lines
    assert ("unit", "[unit] ok") in lines

    followed = gantry(local_stack, "logs", listed["id"], "--follow")
    assert followed.returncode == 0 and f"[lint] pushed {IMAGE}" in followed.stdout

    retry = gantry(local_stack, "retry", listed["name"], "--json")
    assert retry.returncode == 0, retry.stderr
    again = as_json(retry)
    assert again["flow_run_id"] != listed["id"]
    statuses = {s["name"]: s["status"] for s in again["stages"]}
    for stage in ("lint", "static", "unit", "integration"):
        assert statuses[stage] == "cached"
    newest = runs_of(local_stack, repo)[0]
    assert newest["id"] == again["flow_run_id"]
    assert f"gantry:retry-of:{listed['id']}" in newest["tags"]


@pytest.mark.slow
def test_cancel_stops_a_running_pipeline(
    local_stack: Stack, make_repo: Callable[[str], GitRepo]
) -> None:
    repo = make_repo("cli-cancel")
    sleeper = [PY, "-c", "import time; time.sleep(300)"]
    repo.commit({"gantry.toml": gantry_toml(lint=sleeper)})
    env = {**os.environ, **stack_environment(local_stack.settings)}
    argv = [GANTRY, "run", "pr", "--repo", str(repo.path), "--sha", "HEAD", "--json"]
    follower = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (found := runs_of(local_stack, repo)) or found[0]["state"] != "Running":
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
        cancelled = gantry(local_stack, "cancel", found[0]["id"], "--json")
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        assert as_json(cancelled)["state"] == "Cancelled"
        # The `gantry run` following it reports the cancelled run and fails.
        stdout, _ = follower.communicate(timeout=60)
        assert follower.returncode == 1
        assert '"state": "Cancelled"' in stdout
        # The killed engine reports a crash on its way out; the run still ends Cancelled, and
        # a cancel is never retried as a crash would be: one run, no retry of it.
        deadline = time.monotonic() + 30
        while (after := runs_of(local_stack, repo))[0]["state"] != "Cancelled":
            assert time.monotonic() < deadline, after
            time.sleep(0.5)
        time.sleep(3)  # time enough for the crash handler to have acted on the crash event
        after = runs_of(local_stack, repo)
        assert [(run["id"], run["state"]) for run in after] == [(found[0]["id"], "Cancelled")]
        again = gantry(local_stack, "cancel", found[0]["id"])
        assert again.returncode == 2 and "has already ended: Cancelled" in again.stderr
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


@pytest.mark.slow
def test_cancel_exits_1_when_the_run_has_not_ended_within_its_wait(
    prefect_server: PrefectServer,
) -> None:
    # A Running run no worker holds: it is set Cancelling, and nothing ever ends it.
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Running

    @flow(name="gantry-cancel-probe")
    def probe() -> None: ...

    async def running() -> str:
        async with get_client() as client:
            flow_run = await client.create_flow_run(probe)
            await client.set_flow_run_state(flow_run.id, Running(), force=True)
            return str(flow_run.id)

    async def end(flow_run_id: str) -> None:
        async with get_client() as client:
            await client.set_flow_run_state(flow_run_id, Cancelled(), force=True)

    flow_run_id = asyncio.run(running())
    try:
        settings = prefect_server.settings
        env = {
            **os.environ,
            "GANTRY_HOME": str(settings.state_dir),
            "GANTRY_PREFECT_PORT": str(settings.prefect_port),
        }
        argv = [GANTRY, "cancel", flow_run_id, "--wait", "1", "--json"]
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 1, result.stdout + result.stderr
        outcome = as_json(result)
        assert (outcome["state"], outcome["cancelled"]) == ("Cancelling", False)
    finally:
        asyncio.run(end(flow_run_id))
