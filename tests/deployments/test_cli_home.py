"""The stack's state folder is found from any folder: GANTRY_HOME, a `.gantry` above, the user's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.ports import free_port
from deployments.stack import Stack
from tests.plugins.stack import GANTRY, as_json, stack_environment


def status_from(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GANTRY, "status", "--json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def without_home() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("GANTRY_HOME", "XDG_STATE_HOME")}


@pytest.mark.slow
def test_status_finds_the_stack_from_a_subfolder_of_its_project(
    local_stack: Stack, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    deep = project / "services" / "api"
    deep.mkdir(parents=True)
    # The project's .gantry is the running stack's state folder.
    (project / ".gantry").symlink_to(local_stack.settings.state_dir, target_is_directory=True)
    env = {**without_home(), **stack_environment(local_stack.settings)}
    del env["GANTRY_HOME"]
    result = status_from(deep, env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = as_json(result)
    assert report["home"] == str(local_stack.settings.state_dir)
    assert report["up"] is True


def test_without_a_gantry_folder_above_the_state_is_the_users(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**without_home(), "XDG_STATE_HOME": str(tmp_path / "state")}
    env["GANTRY_PREFECT_PORT"] = str(free_port())  # nothing answers: the stack is down
    result = status_from(elsewhere, env)
    assert result.returncode == 1
    assert as_json(result)["home"] == str(tmp_path / "state" / "gantry")


def test_gantry_home_wins_over_a_gantry_folder_above(tmp_path: Path) -> None:
    (tmp_path / ".gantry").mkdir()
    chosen = tmp_path / "chosen"
    env = {**without_home(), "GANTRY_HOME": str(chosen), "GANTRY_PREFECT_PORT": str(free_port())}
    assert as_json(status_from(tmp_path, env))["home"] == str(chosen)
    del env["GANTRY_HOME"]
    assert as_json(status_from(tmp_path, env))["home"] == str(tmp_path / ".gantry")
