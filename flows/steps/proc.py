"""Run one argv command the way every step needs it: streamed, bounded in time, never a shell.

``run_argv`` is for the trusted side's own commands (git and the like). Repository commands
(checks, E2E, smoke) never come here directly: they go through a sandbox runner
(``flows.steps.sandbox``), which reuses ``pump_lines`` and ``ProcResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.logs import StepLogger

TAIL_LINES = 40
# Variables a step may see from the worker's environment. Everything else (API tokens,
# Prefect settings, cloud credentials) stays out: the commands are the repository's own code,
# and for a fork pull request that code is untrusted.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "VIRTUAL_ENV")


@dataclass(frozen=True)
class ProcResult:
    argv: tuple[str, ...]
    exit_code: int | None
    seconds: float
    tail: str
    timed_out: bool = False
    # Set when the command could not start at all (not found, not executable).
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def describe(self) -> str:
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"timed out after {self.seconds:.1f} s"
        return f"exit code {self.exit_code}"


def step_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    env["CI"] = "true"
    env.update(extra or {})
    return env


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The command may have started children (pytest workers, servers): end the whole group.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout=5)
            return
        except TimeoutError:
            continue


async def pump_lines(
    proc: asyncio.subprocess.Process, tail: deque[str], logger: StepLogger, prefix: str
) -> None:
    """Log each output line of ``proc`` as it arrives, keeping the last ones in ``tail``."""
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            break
        line = raw.decode(errors="replace").rstrip("\r\n")
        tail.append(line)
        logger.info("%s%s", prefix, line)


async def run_argv(
    argv: Sequence[str],
    cwd: Path,
    timeout: float,
    logger: StepLogger,
    env: Mapping[str, str] | None = None,
    prefix: str = "",
) -> ProcResult:
    """Run ``argv`` in ``cwd``; each output line goes to ``logger`` as it arrives."""
    args = tuple(argv)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=cwd,
            env=dict(env) if env is not None else step_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        message = f"command not found: {args[0]!r} is not on PATH"
        return ProcResult(args, None, time.monotonic() - started, "", error=message)
    except PermissionError:
        message = f"command not executable: {args[0]!r}"
        return ProcResult(args, None, time.monotonic() - started, "", error=message)

    timed_out = False
    try:
        await asyncio.wait_for(
            asyncio.gather(pump_lines(proc, tail, logger, prefix), proc.wait()), timeout=timeout
        )
    except TimeoutError:
        timed_out = True
        await _kill_group(proc)
        logger.error("%skilled after the %.0f s timeout", prefix, timeout)
    except asyncio.CancelledError:
        # A cancelled run (superseded PR) must not leave the command running.
        await _kill_group(proc)
        raise
    return ProcResult(
        args,
        None if timed_out else proc.returncode,
        time.monotonic() - started,
        "\n".join(tail),
        timed_out=timed_out,
    )
