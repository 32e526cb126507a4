"""What a killed test session left behind, removed by the next session before it starts.

Fixtures stop every server, engine and container they start, but a session killed outright (a
CI time limit, SIGKILL, a lost terminal) runs no teardown: its Prefect server, workers, Podman
service, registry, PostgreSQL, containers and mounts would outlive it, holding memory, ports and
disk. So each session writes its owner (pid and start time) into its temp folder and names that
folder in the environment of everything it starts, and each new session removes the folders,
and every process that names them, of owners that are gone. A
session that ends removes its mark. Folders without a mark (sessions that ended, or older ones),
and folders of a session still running, are left alone.

Containers are removed by the product's own reaper (``ContainerEngine.reap_leftovers``): once
the folder holding their engine's database is gone, they are orphans, removed with their
network and port forwarding as ``gantry up`` removes a deleted stack's.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.mounts import unmount_under
from deployments import engine_leftovers
from deployments.engine import ContainerEngine

OWNER_FILE = "gantry-session-owner.json"
# Set for the whole session to its temp folder: every process the session starts inherits it,
# so a server kept outside that folder (PostgreSQL's, which its account must be able to reach)
# still names it. A process started with an environment of its own must pass it on.
SESSION_VARIABLE = "GANTRY_TEST_SESSION"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command (which may hold spaces and
    parentheses): state first, so proc(5)'s field N is at index N - 3."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    fields = _stat_fields(pid)
    return fields[19] if fields and fields[0] not in ("Z", "X") else None


@dataclass(frozen=True)
class Owner:
    """The session that made a temp folder, and the folder's name when it was made."""

    pid: int
    started: str
    folder: str

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started


def mark(folder: Path, pid: int | None = None) -> None:
    """Record ``pid`` (this process by default) as the owner of ``folder``."""
    pid = os.getpid() if pid is None else pid
    started = _start_time(pid)
    if started is None:
        raise RuntimeError(f"process {pid} is not running")
    owner = {"pid": pid, "started": started, "folder": str(folder.resolve())}
    (folder / OWNER_FILE).write_text(json.dumps(owner))


def owner_of(folder: Path) -> Owner | None:
    try:
        data = json.loads((folder / OWNER_FILE).read_text())
        return Owner(int(data["pid"]), str(data["started"]), str(data["folder"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dead_sessions(root: Path) -> list[tuple[Path, Owner]]:
    """Folders under ``root`` (``pytest-N``, or ``garbage-*`` once pytest renamed them to
    delete them) whose owning session is gone."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir()):
        owner = owner_of(folder) if folder.is_dir() and not folder.is_symlink() else None
        if owner is not None and not owner.alive():
            found.append((folder, owner))
    return found


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        fields = _stat_fields(pid)
        if fields is None:
            break
        pid = int(fields[1])  # the parent's pid
    return pids


def _names_any(pid: int, needles: Sequence[bytes]) -> bool:
    """True when the process's command line or environment names a needle.

    Not its working folder: a shell someone opened in the folder to look is not the session's.
    """
    proc = Path(f"/proc/{pid}")
    texts: list[bytes] = []
    for name in ("cmdline", "environ"):
        with contextlib.suppress(OSError):
            texts.append((proc / name).read_bytes())
    return any(needle in text for text in texts for needle in needles)


def processes_naming(folders: Sequence[str]) -> list[int]:
    """Processes (not this one nor its parents, and not conmon) that name one of ``folders``.

    conmon is left to the engine's reaper: killed alone, it would leave its container running.
    """
    needles = [f"{folder.rstrip('/')}/".encode() for folder in folders]
    spared = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "conmon":
                continue
        if _names_any(int(entry.name), needles):
            found.append(int(entry.name))
    return found


def reap(folder: Path, owner: Owner) -> list[str]:
    """Kill what names ``folder`` (under either of its names) and remove it; what was done."""
    done: list[str] = []
    names = sorted({str(folder.resolve()), owner.folder})
    pids = processes_naming(names)
    # An engine keeps its runtime folder in the temp folder, outside the session's.
    argv = dict(engine_leftovers.processes())
    runroots = {
        root for pid in pids if (root := engine_leftovers.option(argv.get(pid, []), "--runroot"))
    }
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_start_time(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pids:
        done.append(f"killed {len(pids)} process(es) of the session {owner.pid}")
    unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)
    for runroot in map(Path, sorted(runroots)):
        ours = runroot.name.startswith(engine_leftovers.RUNROOT_PREFIX)
        if ours and not engine_leftovers.in_use(runroot):  # no container of it runs on
            unmount_under(runroot)
            shutil.rmtree(runroot, ignore_errors=True)
    done.append(f"removed {folder}" if not folder.exists() else f"could not remove {folder}")
    return done


def reap_dead_sessions(root: Path) -> list[str]:
    """Remove every dead session's folder and processes under ``root``, then their containers."""
    done: list[str] = []
    for folder, owner in dead_sessions(root):
        done += reap(folder, owner)
    if done:
        with tempfile.TemporaryDirectory() as sweep:
            done += ContainerEngine(Path(sweep) / "podman", insecure_registries=[]).reap_leftovers()
    return done


def sessions_root() -> Path:
    """Where pytest makes each session's numbered temp folder (its own rule, ``pytest-of-USER``)."""
    temproot = Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    return temproot.resolve() / f"pytest-of-{getpass.getuser()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Before any fixture: pytest renames old temp folders when this session makes its own.
    if session.config.option.basetemp:
        return  # a folder of the caller's choosing: not pytest's numbered ones
    for line in reap_dead_sessions(sessions_root()):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"leftovers of a killed test session: {line}")


@pytest.fixture(scope="session", autouse=True)
def session_owner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Mark this session's temp folder as ours while it runs; a session that ends unmarks it.

    So only a killed session's folder is reaped: the folders of sessions that ended stay for
    pytest to keep (its last three) as it always does.
    """
    folder = tmp_path_factory.getbasetemp()
    mark(folder)
    os.environ[SESSION_VARIABLE] = f"{folder.resolve()}/"
    yield
    (folder / OWNER_FILE).unlink(missing_ok=True)
