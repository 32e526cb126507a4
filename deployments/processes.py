"""Background processes of the local stack: started detached, tracked by pid file, stopped exactly.

`gantry up` may be called again while the stack runs, and `gantry down` must stop only what
`gantry up` started, so every process is recorded in ``<state>/run/<name>.pid`` together with
the command line it was started with; a stale pid (reused by an unrelated process) is ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.ports import wait_until


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass(frozen=True)
class ManagedProcess:
    """One detached process of the stack, known by name under ``run_dir``."""

    name: str
    run_dir: Path
    # Relay the output through deployments.jsonlines, so that every line of the log is JSON.
    json_logs: bool = False

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of the running process we started, or None (stale files are removed)."""
        try:
            pid_text, _, recorded = self.pid_file.read_text().partition("\n")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        current = _cmdline(pid)
        if current is None or current != recorded.strip():
            # The process is gone, or its pid now belongs to something else.
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> int:
        """Start ``argv`` detached (own session, output to the log file); returns the pid."""
        existing = self.pid()
        if existing is not None:
            return existing
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.json_logs:
            from deployments.jsonlines import json_relay

            argv = json_relay(self.name, argv)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        # Record the command line as /proc shows it, to recognise this process later.
        recorded = ""
        for _ in range(50):
            recorded = _cmdline(proc.pid) or ""
            if recorded:
                break
            time.sleep(0.01)
        self.pid_file.write_text(f"{proc.pid}\n{recorded}\n")
        return proc.pid

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the process group; True when something was running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if not wait_until(lambda: not _alive(pid), timeout, 0.1):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), 5.0, 0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _alive(pid: int) -> bool:
    # Reap our own child if it exited; otherwise a zombie would look alive.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _proc_state(pid)
    return state not in ("Z", "X")


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]
