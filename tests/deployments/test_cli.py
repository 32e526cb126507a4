"""The `gantry` command line against a real local stack: exit codes and JSON tell the truth."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.ports import StackError, free_port
from core.settings import StackSettings
from deployments.demo import prepare_sample_repo
from deployments.stack import Stack
from tests.plugins.gitrepo import GitRepo, gantry_toml
from tests.plugins.stack import GANTRY, as_json, gantry

PY = sys.executable


@pytest.mark.slow
def test_run_pr_json_reports_every_stage_and_exits_0_when_it_passed(
    local_stack: Stack, make_repo: Callable[[str], GitRepo]
) -> None:
    repo = make_repo("cli-ok")
    ok = [PY, "-c", "print('ok')"]
    repo.commit({"gantry.toml": gantry_toml(lint=ok, static=ok, unit=ok, integration=ok)})
    result = gantry(local_stack, "run", "pr", "--repo", str(repo.path), "--sha", "HEAD", "--json")
    assert result.returncode == 0, result.stderr
    report = as_json(result)
    assert report["passed"] is True
    assert report["state"] == "Completed"
    assert report["flow_run_id"]
    assert report["seconds"] > 0
    assert report["url"].startswith(local_stack.settings.prefect_url)
    assert [(s["name"], s["status"]) for s in report["stages"]] == [
        ("lint", "passed"),
        ("static", "passed"),
        ("unit", "passed"),
        ("integration", "passed"),
        ("build", "skipped"),
        ("scan", "skipped"),
    ]
    assert all(isinstance(s["seconds"], float) for s in report["stages"])


@pytest.mark.slow
def test_run_pr_exits_1_and_names_the_failed_stage(
    local_stack: Stack, make_repo: Callable[[str], GitRepo]
) -> None:
    repo = make_repo("cli-fails")
    sha = repo.commit(
        {"gantry.toml": gantry_toml(lint=[PY, "-c", "raise SystemExit(2)"], unit=[PY, "-c", "1"])}
    )
    result = gantry(local_stack, "run", "pr", "--repo", str(repo.path), "--sha", sha, "--json")
    assert result.returncode == 1
    report = as_json(result)
    assert report["passed"] is False
    assert report["state"] == "Failed"
    assert report["message"] == "failed stages: lint"
    by_name = {s["name"]: s["status"] for s in report["stages"]}
    assert by_name == {
        "lint": "failed",
        "static": "skipped",
        "unit": "passed",
        "integration": "skipped",
        "build": "skipped",
        "scan": "skipped",
    }


@pytest.mark.slow
def test_the_sample_service_passes_its_pr_pipeline(local_stack: Stack) -> None:
    repo, sha = prepare_sample_repo(local_stack.settings.state_dir)
    result = gantry(local_stack, "run", "pr", "--repo", str(repo), "--sha", sha, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    stages = {s["name"]: s["status"] for s in as_json(result)["stages"]}
    for check in ("lint", "static", "unit", "integration", "build"):
        assert stages[check] == "passed"
    # No Snyk token in the test environment: the scan says so instead of passing.
    assert stages["scan"] == "skipped"


@pytest.mark.slow
def test_status_json_lists_each_part_with_its_url(local_stack: Stack) -> None:
    result = gantry(local_stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = as_json(result)
    assert report["up"] is True
    server = report["parts"]["prefect-server"]
    assert server == {"url": local_stack.settings.prefect_url, "up": True, "detail": ""}
    assert report["parts"]["worker"]["up"] is True
    assert report["parts"]["webhooks"]["up"] is True
    assert set(report["last_runs"]) <= {"pr", "merge", "release"}
    for run in report["last_runs"].values():
        assert run["url"].startswith(f"{local_stack.settings.prefect_url}/runs/flow-run/")


@pytest.mark.slow
def test_up_is_idempotent_and_reuses_what_runs(local_stack: Stack) -> None:
    before = (local_stack.server.process.pid(), local_stack.worker.pid())
    result = gantry(local_stack, "up", "--json")
    assert result.returncode == 0, result.stderr
    assert (local_stack.server.process.pid(), local_stack.worker.pid()) == before


def test_a_bad_sha_is_a_usage_error_with_exit_2(
    make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    repo = make_repo("cli-bad-sha")
    repo.commit({"gantry.toml": gantry_toml(lint=[PY, "-c", "1"])})
    result = gantry(
        None, "run", "pr", "--repo", str(repo.path), "--sha", "no-such-ref", home=tmp_path
    )
    assert result.returncode == 2
    assert "'no-such-ref' is not a commit of" in result.stderr


def test_status_of_a_stack_that_is_not_running_exits_1(tmp_path: Path) -> None:
    env_port = str(free_port())
    result = subprocess.run(
        [GANTRY, "status", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "GANTRY_HOME": str(tmp_path), "GANTRY_PREFECT_PORT": env_port},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert as_json(result)["parts"]["prefect-server"]["up"] is False


def test_down_with_nothing_running_stops_nothing(tmp_path: Path) -> None:
    result = gantry(None, "down", "--json", home=tmp_path)
    assert result.returncode == 0
    assert as_json(result) == {
        "stopped": [],
        "cancelled_runs": [],
        "sandboxes_removed": [],
        "environments_stopped": [],
    }


def test_a_port_taken_by_another_program_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(
            StackSettings(
                home=tmp_path,
                prefect_port=port,
                registry_port=free_port(),
                webhook_port=free_port(),
            )
        )
        with pytest.raises(StackError, match=f"port {port} on 127.0.0.1 .* is taken by another"):
            stack.up()
        # Refused before anything started.
        assert not stack.registry.process.running()
        assert not stack.engine.process.running()
