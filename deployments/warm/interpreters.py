"""A small pool of warm interpreters: child processes that have imported Prefect and the flows
and wait for one flow run each (``deployments/warm/child.py``).

Each interpreter serves one run and exits with it; taking one starts a replacement in the
background, so the next run finds a warm one again. An interpreter that dies while idle (killed,
out of memory) is noticed at once (its exit is awaited) and replaced. Each runs in its own
process group (a new session), so killing the group ends the interpreter and everything its
flow run started.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from deployments.warm.child import READY
from deployments.warm.environment import import_time_differences

CHILD_MODULE = "deployments.warm.child"
RETIRE_SECONDS = 5.0
# An interpreter that died before it was ready is replaced after a pause, so a broken
# installation does not make the worker start interpreters in a tight loop.
RESPAWN_BACKOFF_SECONDS = 2.0


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (Linux /proc), None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def kill_group(pid: int, signum: signal.Signals) -> bool:
    """Signal the process group ``pid`` leads; False when it is already gone."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    return True


@dataclass
class WarmInterpreter:
    process: asyncio.subprocess.Process
    env: dict[str, str]
    spawned: float = field(default_factory=time.monotonic)
    ready_seconds: float | None = None
    rss: int | None = None
    taken: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def hand(self, flow_run_id: UUID, env: Mapping[str, str], cwd: Path) -> None:
        """Give the interpreter its one job; the environment travels on the pipe, never in
        an argument or a log line."""
        stdin = self.process.stdin
        if stdin is None:
            raise RuntimeError("the warm interpreter has no job pipe")
        job = {"flow_run_id": str(flow_run_id), "env": dict(env), "cwd": str(cwd)}
        stdin.write(json.dumps(job).encode() + b"\n")
        await stdin.drain()
        stdin.close()

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": "ready" if self.ready_seconds is not None else "warming",
            "ready_seconds": self.ready_seconds,
            "rss_mib": None if self.rss is None else round(self.rss / 2**20, 1),
        }


class WarmPool:
    """``size`` idle warm interpreters, started with ``env`` and importing ``modules``."""

    def __init__(
        self,
        size: int,
        modules: Sequence[str],
        logger: logging.Logger | logging.LoggerAdapter[Any],
        status_file: Path | None = None,
        python: str = sys.executable,
    ) -> None:
        if size < 1:
            raise ValueError("a warm pool holds at least one interpreter")
        self.size = size
        self.modules = list(modules)
        self.logger = logger
        self.status_file = status_file
        self.python = python
        self.env: dict[str, str] = {}
        self.idle: list[WarmInterpreter] = []
        self.replaced = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- starting and replacing ---------------------------------------------------------------
    async def start(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._closing = False
        for _ in range(self.size - len(self.idle)):
            await self._spawn()

    async def retarget(self, env: Mapping[str, str]) -> None:
        """Warm with ``env`` from now on; idle interpreters warmed with other import-time
        values are retired and replaced."""
        changed = import_time_differences(self.env, env)
        self.env = dict(env)
        if not changed:
            return
        self.logger.info(
            "warm interpreters restart: the flow runs' environment changed (%s)", ", ".join(changed)
        )
        stale, self.idle = self.idle, []
        for interpreter in stale:
            self._background(self._retire(interpreter))
        for _ in range(self.size):
            await self._spawn()

    async def _spawn(self) -> None:
        if self._closing:
            return
        read_end, write_end = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                CHILD_MODULE,
                "--ready-fd",
                str(write_end),
                *self.modules,
                stdin=asyncio.subprocess.PIPE,
                env=self.env,
                pass_fds=(write_end,),
                # Its own process group: cancelling a run kills the group, the interpreter
                # and whatever its flow run started, and a signal to the worker's group (a
                # terminal's Ctrl-C) does not reach runs in flight.
                start_new_session=True,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        interpreter = WarmInterpreter(process, dict(self.env))
        self.idle.append(interpreter)
        self._background(self._await_ready(interpreter, read_end))
        self._background(self._watch(interpreter))
        self.write_status()

    def _background(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_ready(self, interpreter: WarmInterpreter, read_end: int) -> None:
        try:
            # A blocking read in a thread: it ends with the ready line or at the child's exit.
            data = await asyncio.to_thread(os.read, read_end, len(READY))
        finally:
            os.close(read_end)
        if data != READY:
            return
        interpreter.ready_seconds = time.monotonic() - interpreter.spawned
        interpreter.rss = rss_bytes(interpreter.pid)
        rss = "unknown" if interpreter.rss is None else f"{interpreter.rss / 2**20:.0f} MiB"
        self.logger.info(
            "warm interpreter pid %s ready in %.1f s, RSS %s",
            interpreter.pid,
            interpreter.ready_seconds,
            rss,
        )
        self.write_status()

    async def _watch(self, interpreter: WarmInterpreter) -> None:
        code = await interpreter.process.wait()
        if interpreter.taken or self._closing:
            return
        if interpreter in self.idle:
            self.idle.remove(interpreter)
            self.replaced += 1
            self.logger.warning(
                "warm interpreter pid %s exited with %s while idle; starting a replacement",
                interpreter.pid,
                code,
            )
            if interpreter.ready_seconds is None:
                await asyncio.sleep(RESPAWN_BACKOFF_SECONDS)
            await self._spawn()

    # -- handing out ----------------------------------------------------------------------------
    def take(self, env: Mapping[str, str]) -> tuple[WarmInterpreter | None, str]:
        """An idle interpreter for a run with ``env`` (ready ones first, else one still
        importing: it is further along than a cold start), or None and why not."""
        differences = import_time_differences(self.env, env)
        if differences:
            return None, (
                "its environment differs from the warm interpreters' in variables read at "
                f"import: {', '.join(differences)}"
            )
        candidates = [each for each in self.idle if each.alive]
        if not candidates:
            return None, "no warm interpreter is idle"
        candidates.sort(key=lambda each: each.ready_seconds is None)
        chosen = candidates[0]
        chosen.taken = True
        self.idle.remove(chosen)
        self._background(self._spawn())
        self.write_status()
        return chosen, ""

    # -- stopping --------------------------------------------------------------------------------
    async def _retire(self, interpreter: WarmInterpreter) -> None:
        interpreter.taken = True
        if interpreter.process.stdin is not None:
            interpreter.process.stdin.close()  # end of input: the child exits 0
        try:
            await asyncio.wait_for(interpreter.process.wait(), RETIRE_SECONDS)
        except TimeoutError:
            kill_group(interpreter.pid, signal.SIGKILL)
            await interpreter.process.wait()

    async def close(self) -> None:
        self._closing = True
        idle, self.idle = self.idle, []
        await asyncio.gather(*(self._retire(each) for each in idle))
        for task in list(self._tasks):
            task.cancel()
        self.write_status()

    # -- reporting -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "replaced_while_idle": self.replaced,
            "interpreters": [each.describe() for each in self.idle],
        }

    def write_status(self) -> None:
        """The pool's state as JSON (pids, warming/ready, RSS) for status commands to show."""
        if self.status_file is None:
            return
        try:
            self.status_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.status_file.with_suffix(".tmp")
            partial.write_text(json.dumps({**self.describe(), "updated": time.time()}))
            partial.replace(self.status_file)
        except OSError as exc:
            self.logger.warning("cannot write the warm pool's status file: %s", exc)
