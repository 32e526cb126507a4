"""Which sandbox runner runs a step, and the one call the steps make: ``run_step``.

``get_runner()`` picks the runner the worker is configured for (``GANTRY_SANDBOX_RUNNER``:
``local``, the default, or ``kubernetes``); ``run_step`` is what the steps call.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, cast

from prefect.runtime import flow_run
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import StackSettings
from flows.config import Sandbox
from flows.logs import StepLogger
from flows.steps.proc import ProcResult
from flows.steps.sandbox.base import Limits, Network, SandboxError, StepRunner, StepSpec

FLOW_RUN_LABEL = "gantry.flow-run-id"
STACK_LABEL = "gantry.stack"


class SandboxSettings(BaseSettings):
    """Which runner this worker uses; set by whoever deploys the worker, never by a run."""

    model_config = SettingsConfigDict(env_prefix="GANTRY_SANDBOX_", extra="ignore")

    runner: Literal["local", "kubernetes"] = "local"


def get_runner(kind: str | None = None) -> StepRunner:
    kind = kind or SandboxSettings().runner
    if kind == "local":
        from flows.steps.sandbox.local import LocalRunner

        return LocalRunner()
    if kind == "kubernetes":
        # Hook for the Kubernetes runner (flows/steps/sandbox/kubernetes.py): a class named
        # KubernetesRunner constructible without arguments (it reads its own block/settings).
        module = importlib.import_module("flows.steps.sandbox.kubernetes")
        return cast(StepRunner, module.KubernetesRunner())
    raise SandboxError(f"unknown sandbox runner {kind!r}: expected local or kubernetes")


def run_labels() -> dict[str, str]:
    """Labels of every sandbox of this flow run, so that its leftovers can be reaped."""
    run_id = flow_run.get_id()
    labels = {STACK_LABEL: StackSettings().stack_id}
    if run_id:
        labels[FLOW_RUN_LABEL] = str(run_id)
    return labels


async def run_step(
    argv: Sequence[str],
    workspace: Path,
    timeout: float,
    logger: StepLogger,
    *,
    sandbox: Sandbox,
    env: Mapping[str, str] | None = None,
    network: Network = "none",
    target_url: str | None = None,
    prefix: str = "",
    runner: StepRunner | None = None,
) -> ProcResult:
    """Run one repository command in a sandbox; a sandbox that cannot be made is a failure."""
    spec = StepSpec(
        argv=tuple(argv),
        workspace=workspace,
        timeout=timeout,
        env=dict(env or {}),
        network=network,
        target_url=target_url,
        limits=Limits(cpus=sandbox.cpus, memory_mb=sandbox.memory_mb, processes=sandbox.processes),
        image=sandbox.image,
        labels=run_labels(),
    )
    try:
        return await (runner or get_runner()).run(spec, logger, prefix)
    except SandboxError as exc:
        logger.error("%ssandbox: %s", prefix, exc)
        return ProcResult(spec.argv, None, 0.0, "", error=f"sandbox: {exc}")


async def reap_stack_leftovers(settings: StackSettings | None = None) -> list[str]:
    """Remove the sandboxes a crashed or stopped worker of this stack left behind; their names.

    Called when the stack's worker starts: no run of this stack can be in flight then.
    """
    if SandboxSettings().runner != "local":
        # Step pods are shared by every worker replica of a cluster and end by their own
        # deadline; a starting replica must not delete the pods of its peers' runs.
        return []
    stack_id = (settings or StackSettings()).stack_id
    return await get_runner().reap({STACK_LABEL: stack_id})
