"""CPU, memory and process-count limits for one sandbox, as cgroup v1 groups of its own.

Why cgroups and not rlimits: the local runner starts bubblewrap as the worker's user (root on
the demo machine), and the sandbox's uid 65534 is that user seen through a user namespace. The
kernel counts RLIMIT_NPROC per *real* uid and never enforces it for root, so an rlimit would not
bound a fork bomb; the ``pids`` controller does, whatever the uid. ``memory`` bounds the whole
tree (an rlimit would bound each process), and ``cpu`` gives a CFS quota of ``cpus`` cores.
The pids group also lists every process of the sandbox, which is how a reaper finds them.

Each sandbox gets ``<controller>/gantry-sandboxes/<name>``; when the hierarchy is not writable
(not root, cgroup v2 only) ``open_group`` returns None and the runner falls back to rlimits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from flows.steps.sandbox.base import Limits

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "gantry-sandboxes"
CONTROLLERS = ("cpu", "memory", "pids")
CFS_PERIOD_US = 100_000


@dataclass(frozen=True)
class Group:
    name: str
    paths: tuple[Path, ...]

    def add(self, pid: int) -> None:
        """Move ``pid`` in before it forks: its children are then born inside the limits."""
        for path in self.paths:
            (path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return group_pids(self.name)

    def kill_and_remove(self) -> None:
        remove_group(self.name)


def _limit_files(limits: Limits) -> dict[str, dict[str, str]]:
    memory = str(limits.memory_mb * 1024 * 1024)
    return {
        "cpu": {
            "cpu.cfs_period_us": str(CFS_PERIOD_US),
            "cpu.cfs_quota_us": str(max(1000, int(limits.cpus * CFS_PERIOD_US))),
        },
        # Swap counts too where the kernel accounts it, or the limit would only move pages out.
        "memory": {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory},
        "pids": {"pids.max": str(limits.processes)},
    }


def available() -> bool:
    return all(os.access(CGROUP_ROOT / c, os.W_OK) for c in CONTROLLERS)


def open_group(name: str, limits: Limits) -> Group | None:
    """A fresh group per controller with ``limits`` written; None when cgroups are not usable."""
    if not available():
        return None
    paths: list[Path] = []
    try:
        for controller, files in _limit_files(limits).items():
            path = CGROUP_ROOT / controller / PARENT / name
            path.mkdir(parents=True, exist_ok=True)
            paths.append(path)
            for file, value in files.items():
                target = path / file
                if target.exists():
                    target.write_text(value)
    except OSError:
        remove_group(name)
        return None
    return Group(name, tuple(paths))


def group_pids(name: str) -> list[int]:
    try:
        text = (CGROUP_ROOT / "pids" / PARENT / name / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(line) for line in text.split()]


def group_names() -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(p.name for p in (CGROUP_ROOT / "pids" / PARENT).iterdir() if p.is_dir())
    return []


def remove_group(name: str) -> None:
    """SIGKILL whatever is still in the group, then remove it (a group must be empty to go)."""
    for _ in range(50):
        pids = group_pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        gone = True
        for controller in CONTROLLERS:
            path = CGROUP_ROOT / controller / PARENT / name
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                gone = False
        if gone:
            return
        # Killed processes leave the group once the kernel has reaped them: a few ms.
        time.sleep(0.02)
