"""The one interface every stage uses to run repository code: a ``StepRunner``.

Repository code (checks, E2E, smoke) is untrusted, even on the default branch: it runs only
through a runner that isolates it from the worker (``local``: namespaces on this machine;
``kubernetes``: a Pod of its own in a locked-down namespace). The trusted side builds the
``StepSpec`` from typed `gantry.toml` models; nothing in it passes through a shell.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from flows.logs import StepLogger
from flows.steps.proc import ProcResult

# "none": the step's own loopback only. "target": only the environment under test (E2E and
# smoke reach GANTRY_TARGET_URL and nothing else). "outside": the internet, opted into in
# gantry.toml; the host's loopback services and the cloud metadata address stay unreachable.
Network = Literal["none", "target", "outside"]


@dataclass(frozen=True)
class Limits:
    """What one step may use; the defaults fit the checks of a typical service."""

    cpus: float = 2.0
    memory_mb: int = 2048
    processes: int = 512


@dataclass(frozen=True)
class StepSpec:
    """One command to run in a sandbox, and everything the sandbox may give it."""

    argv: tuple[str, ...]
    workspace: Path  # the checkout: the only folder mounted read-write
    timeout: float
    env: Mapping[str, str] = field(default_factory=dict)  # declared, non-secret; CI=true added
    network: Network = "none"
    target_url: str | None = None  # with network="target": the one address it may reach
    limits: Limits = field(default_factory=Limits)
    # Names the toolchain: None is the default toolchain; else an image reference.
    image: str | None = None
    # Labels every sandbox carries, so that leftovers can be found and reaped (flow run id).
    labels: Mapping[str, str] = field(default_factory=dict)


class SandboxError(RuntimeError):
    """The sandbox itself could not be made (not the command failing inside it)."""


class StepRunner(Protocol):
    """Runs one ``StepSpec`` isolated from the worker; streams each output line to ``logger``.

    The timeout, the run's cancellation and the worker's death each end everything the step
    started. A command that cannot start is a ``ProcResult`` with ``error`` set, not an exception.
    """

    name: str

    async def run(self, spec: StepSpec, logger: StepLogger, prefix: str = "") -> ProcResult: ...

    async def reap(self, labels: Mapping[str, str] | None = None) -> list[str]:
        """Remove leftover sandboxes (all Gantry's, or those matching ``labels``); their names."""
        ...
