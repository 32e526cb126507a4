"""Which sandbox runner runs a step: the worker's ``GANTRY_SANDBOX_RUNNER`` chooses it, and
nothing a run brings (its parameters, its repository's gantry.toml, a step's declared
environment) can."""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.config import ConfigError, Sandbox, parse_config
from flows.pipelines.merge import merge_pipeline
from flows.pipelines.pr import pr_pipeline
from flows.pipelines.release import release_pipeline
from flows.steps.sandbox.kubernetes import KubernetesRunner
from flows.steps.sandbox.local import LocalRunner
from flows.steps.sandbox.select import get_runner, run_step

LOG = logging.getLogger("test.sandbox")
RUNNER_ENV = "GANTRY_SANDBOX_RUNNER"


def test_the_workers_setting_chooses_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUNNER_ENV, raising=False)
    assert isinstance(get_runner(), LocalRunner)
    monkeypatch.setenv(RUNNER_ENV, "kubernetes")
    assert isinstance(get_runner(), KubernetesRunner)
    monkeypatch.setenv(RUNNER_ENV, "local")
    assert isinstance(get_runner(), LocalRunner)
    monkeypatch.setenv(RUNNER_ENV, "docker")
    with pytest.raises(ValidationError, match="runner"):
        get_runner()


def test_a_repositorys_gantry_toml_cannot_choose_the_runner() -> None:
    with pytest.raises(ConfigError, match=r"sandbox\.runner"):
        parse_config('[sandbox]\nrunner = "kubernetes"\n')
    with pytest.raises(ConfigError, match="runner"):
        parse_config('[checks.unit]\ncommand = ["pytest"]\nrunner = "kubernetes"\n')


def test_no_pipeline_takes_a_parameter_that_names_the_runner() -> None:
    for flow in (pr_pipeline, merge_pipeline, release_pipeline):
        names = inspect.signature(flow.fn).parameters
        assert not [n for n in names if "runner" in n or "sandbox" in n], flow.name


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_a_steps_declared_environment_does_not_choose_the_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker says local; the step's environment names the cluster runner: the step runs
    # in the local sandbox, where the variable is only a variable.
    monkeypatch.setenv(RUNNER_ENV, "local")
    argv = ["python3", "-c", f"import os; print(os.environ['{RUNNER_ENV}'])"]
    env = {RUNNER_ENV: "kubernetes"}
    result = asyncio.run(run_step(argv, tmp_path, 30, LOG, sandbox=Sandbox(), env=env))
    assert result.ok, result.tail
    assert result.tail.splitlines()[-1] == "kubernetes"
    # The worker says kubernetes; the step's environment says local: the step goes to the
    # cluster runner, whose first act (reading the checkout's commit, to clone it in the pod)
    # fails on this folder, and it never runs locally.
    monkeypatch.setenv(RUNNER_ENV, "kubernetes")
    argv = ["python3", "-c", "print('ran locally')"]
    env = {RUNNER_ENV: "local"}
    result = asyncio.run(run_step(argv, tmp_path, 30, LOG, sandbox=Sandbox(), env=env))
    assert not result.ok and "ran locally" not in result.tail
    assert result.error is not None and result.error.startswith("sandbox:")
    assert "the checkout's commit" in result.error
