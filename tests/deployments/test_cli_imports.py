"""`gantry --help`, `gantry status`, argument errors and `gantry run pr` run without Prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.ports import free_port
from deployments.stack import Stack
from tests.plugins.gitrepo import GitRepo, gantry_toml
from tests.plugins.stack import stack_environment

# Runs the real entry point, then prints which top-level packages the process had imported.
WRAPPER = """
import atexit, json, sys

def loaded():
    print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)

atexit.register(loaded)
sys.argv = ["gantry", *sys.argv[1:]]
from deployments.cli.main import main
main()
"""


def gantry_modules(
    *args: str, home: Path, stack: Stack | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    env = {
        **os.environ,
        "GANTRY_HOME": str(home),
        # Nothing answers there: status finds the stack down.
        "GANTRY_PREFECT_PORT": str(free_port()),
        "GANTRY_WEBHOOK_PORT": str(free_port()),
        "GANTRY_REGISTRY_PORT": str(free_port()),
    }
    if stack is not None:
        env.update(stack_environment(stack.settings))
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    packages: set[str] = set(json.loads(result.stderr.strip().splitlines()[-1]))
    return result, packages


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["run", "pr", "--help"], 0),
        (["status"], 1),  # no stack: each part down, exit 1
        (["status", "--json"], 1),
        (["run", "pr", "--no-such-option"], 2),
        (["logs"], 2),  # RUN missing
        (["runs", "--pipeline", "nightly"], 2),
        (["cancel", "some-run", "--wait", "soon"], 2),
    ],
)
def test_help_status_and_argument_errors_do_not_import_prefect(
    args: list[str], code: int, tmp_path: Path
) -> None:
    result, packages = gantry_modules(*args, home=tmp_path)
    assert result.returncode == code, result.stdout + result.stderr
    assert "prefect" not in packages
    assert not any(p.startswith("prefect") for p in packages), sorted(packages)


def test_help_loads_neither_settings_nor_rich(tmp_path: Path) -> None:
    """What --help pays for: typer and the standard library, nothing of the stack."""
    result, packages = gantry_modules("--help", home=tmp_path)
    assert result.returncode == 0
    assert "logs" in result.stdout and "retry" in result.stdout
    assert {"pydantic_settings", "httpx", "rich"}.isdisjoint(packages), sorted(packages)


@pytest.mark.slow
def test_run_pr_starts_and_follows_its_run_without_prefect(
    local_stack: Stack, make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    """`gantry run pr` talks to the REST API with httpx: a cached re-run is not worth seconds
    of Prefect imports."""
    repo = make_repo("cli-imports-run")
    # Its own commands: no other test's cached stages.
    ok = [sys.executable, "-c", "print('run without prefect')"]
    repo.commit({"gantry.toml": gantry_toml(lint=ok, static=ok, unit=ok, integration=ok)})
    args = ("run", "pr", "--repo", str(repo.path), "--sha", "HEAD", "--json")
    result, packages = gantry_modules(*args, home=tmp_path, stack=local_stack)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert [(s["name"], s["status"]) for s in report["stages"]][:4] == [
        ("lint", "passed"),
        ("static", "passed"),
        ("unit", "passed"),
        ("integration", "passed"),
    ]
    assert not any(p.startswith("prefect") for p in packages), sorted(packages)
