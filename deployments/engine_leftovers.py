"""Containers that Gantry engines left running after their stack stopped or its folder went away.

A container outlives the engine that started it: conmon, its monitor, is a session of its own,
holds the container's published ports (a listening socket per port) and, when the container
exits, runs ``podman container cleanup``, which takes down its network: the port forwarding
(CNI's DNAT rules) and its address reservation. Two ways leave that forwarding behind for ever:

- conmon killed together with its container (by hand, or a process-group kill): no cleanup runs;
- the container exiting after its engine's state folder was removed: the cleanup finds no
  database, knows no such container and does nothing.

Either leaves DNAT rules that send later traffic for those ports to an address nobody answers
on, even after a new container publishes the same port. So a container whose engine's database
is gone (an *orphan*) is removed here the only way still open: conmon killed first (its cleanup
could only fail, and would recreate the removed folder), the container killed through its OCI
runtime, then its network torn down by the CNI plugins themselves, with the configuration and
result Podman cached for exactly this (what ``podman container cleanup`` would have done).
A container whose engine still has its database is removed by ``podman rm -f``.

A container is Gantry's when it runs on a Gantry engine (runtime folder ``gantry-podman-*``,
``deployments/engine.py``); its stack is the state folder that holds the engine's storage.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.mounts import unmount_under

RUNROOT_PREFIX = "gantry-podman-"
CNI_RESULTS = Path("/var/lib/cni/results")
CNI_PLUGIN_DIRS = ("/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin")
NETNS_DIR = Path("/run/netns")
# Podman's database, in the engine's storage: without it, no Podman knows the container.
DATABASES = ("bolt_state.db", "db.sql")


@dataclass(frozen=True)
class EngineContainer:
    """A running container of a Gantry engine, as its conmon process describes it."""

    conmon_pid: int
    container_id: str
    name: str
    runtime: str
    root: Path
    runroot: Path

    @property
    def engine_dir(self) -> Path:
        """The engine's folder (``<state folder>/podman``)."""
        return self.root.parent

    @property
    def stack_dir(self) -> Path:
        return self.engine_dir.parent

    def orphaned(self) -> bool:
        """True when no Podman can know this container any more (its database is gone)."""
        return not any((self.root / "libpod" / name).exists() for name in DATABASES)

    def cni_caches(self) -> list[Path]:
        """Podman's CNI cache files of this container, one per network (``<net>-<id>-<if>``)."""
        return sorted(CNI_RESULTS.glob(f"*-{self.container_id}-*"))

    def host_ports(self) -> set[int]:
        """The host ports this container publishes (from the CNI cache)."""
        ports: set[int] = set()
        for cache in self.cni_caches():
            mappings = _read_cache(cache).get("capabilityArgs", {}).get("portMappings") or []
            ports.update(int(m["hostPort"]) for m in mappings if m.get("hostPort"))
        return ports

    def describe(self) -> str:
        ports = ", ".join(str(p) for p in sorted(self.host_ports()))
        held = f" (port {ports})" if ports else ""
        return f"container {self.name}{held} of the stack at {self.stack_dir}"


def _argv(pid: str) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes() -> Iterator[tuple[int, list[str]]]:
    """Every process of this machine with a command line: its pid and its argv."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _argv(entry.name)
            if argv:
                yield int(entry.name), argv


def option(argv: list[str], flag: str) -> str | None:
    """The word after ``flag`` in ``argv``, if any."""
    with contextlib.suppress(ValueError, IndexError):
        return argv[argv.index(flag) + 1]
    return None


def _parse_conmon(pid: int, argv: list[str]) -> EngineContainer | None:
    container_id, name = option(argv, "-c"), option(argv, "-n")
    # The exit command is `podman --root R --runroot RR ... container cleanup ID`, one
    # --exit-command-arg per word.
    exit_args = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--exit-command-arg"]
    root, runroot = option(exit_args, "--root"), option(exit_args, "--runroot")
    if not (container_id and root and runroot):
        return None
    return EngineContainer(
        conmon_pid=pid,
        container_id=container_id,
        name=name or container_id[:12],
        runtime=option(argv, "-r") or "runc",
        root=Path(root),
        runroot=Path(runroot),
    )


def gantry_containers() -> list[EngineContainer]:
    """Every running container of any Gantry engine on this machine."""
    found = []
    for pid, argv in processes():
        if Path(argv[0]).name != "conmon":
            continue
        container = _parse_conmon(pid, argv)
        if container is not None and container.runroot.name.startswith(RUNROOT_PREFIX):
            found.append(container)
    return found


def running_container_ids() -> set[str]:
    """Ids of the containers every conmon on this machine (any engine) monitors."""
    return {
        cid
        for _, argv in processes()
        if Path(argv[0]).name == "conmon" and (cid := option(argv, "-c"))
    }


def engine_serving(root: Path) -> bool:
    """True when a Podman service runs on the storage ``root`` (its stack is live)."""
    for _, argv in processes():
        if Path(argv[0]).name == "podman" and "service" in argv and str(root) in argv:
            return True
    return False


# -- removing an orphan -----------------------------------------------------------------------
def _read_cache(path: Path) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return parsed


def _plugin(kind: str) -> str | None:
    for folder in CNI_PLUGIN_DIRS:
        candidate = Path(folder) / kind
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _netns(cache: Mapping[str, Any]) -> str:
    for interface in (cache.get("result") or {}).get("interfaces") or []:
        if interface.get("sandbox"):
            return str(interface["sandbox"])
    return ""


def cni_delete(cache_path: Path) -> list[str]:
    """Tear down one container's network from Podman's CNI cache (CNI ``DEL``, as libcni does).

    Each plugin of the network's list, last first, gets its configuration, the cached
    capability arguments (port mappings) and the cached result; the plugins remove their own
    rules and address reservations. Returns the errors of plugins that failed.
    """
    cache = _read_cache(cache_path)
    try:
        network = json.loads(base64.b64decode(cache["config"]))
    except (KeyError, ValueError):
        cache_path.unlink(missing_ok=True)
        return [f"unreadable CNI cache {cache_path.name}"]
    capabilities = cache.get("capabilityArgs") or {}
    env = {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": str(cache.get("containerId", "")),
        "CNI_NETNS": _netns(cache),
        "CNI_IFNAME": str(cache.get("ifName", "eth0")),
        "CNI_ARGS": ";".join("=".join(pair) for pair in cache.get("cniArgs") or []),
        "CNI_PATH": os.pathsep.join(CNI_PLUGIN_DIRS),
        "PATH": os.environ.get("PATH", os.defpath),
    }
    errors = []
    for plugin in reversed(network.get("plugins") or []):
        binary = _plugin(str(plugin.get("type", "")))
        if binary is None:
            errors.append(f"CNI plugin {plugin.get('type')!r} not found")
            continue
        conf = {**plugin, "name": network["name"], "cniVersion": network["cniVersion"]}
        wanted = plugin.get("capabilities") or {}
        runtime = {key: capabilities[key] for key in wanted if key in capabilities}
        if runtime:
            conf["runtimeConfig"] = runtime
        if cache.get("result"):
            conf["prevResult"] = cache["result"]
        result = subprocess.run(
            [binary],
            input=json.dumps(conf).encode(),
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        detail = (result.stdout + result.stderr).decode(errors="replace").strip()
        # Older plugins fail a DEL whose rules are gone already: nothing is left to undo.
        if result.returncode != 0 and "does not exist" not in detail:
            errors.append(f"CNI {plugin.get('type')} DEL: {detail[-300:]}")
    if not errors:
        cache_path.unlink(missing_ok=True)
    return errors


def _remove_netns(path: str) -> None:
    """Remove the network namespace Podman created (a bind mount under /run/netns)."""
    netns = Path(path)
    if netns.parent != NETNS_DIR or not netns.exists():
        return
    subprocess.run(["umount", str(netns)], capture_output=True, timeout=30, check=False)
    netns.unlink(missing_ok=True)


def _kill_container(container: EngineContainer) -> None:
    """Kill the container's processes through its OCI runtime, else by its recorded pid."""
    result = subprocess.run(
        [container.runtime, "delete", "--force", container.container_id],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if result.returncode == 0:
        return
    pidfile = container.runroot / "overlay-containers" / container.container_id / "userdata"
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        os.kill(int((pidfile / "pidfile").read_text().strip()), signal.SIGKILL)


def remove_orphan(container: EngineContainer) -> list[str]:
    """Remove a container whose engine's database is gone; returns what could not be undone."""
    # conmon first, without the chance to run its cleanup: that would fail without the database
    # and recreate the removed storage folder doing so.
    with contextlib.suppress(ProcessLookupError):
        os.kill(container.conmon_pid, signal.SIGKILL)
    _kill_container(container)
    errors: list[str] = []
    for cache in container.cni_caches():
        netns = _netns(_read_cache(cache))
        errors += cni_delete(cache)
        _remove_netns(netns)
    return errors


def in_use(path: Path) -> bool:
    """True when a running process names ``path`` on its command line (conmon, Podman do)."""
    needle = str(path)
    return any(needle in " ".join(argv) for _, argv in processes())


def tidy_engine_folders(containers: Iterable[EngineContainer]) -> None:
    """Remove what removed engines left on disk: mounts and folders their storage held."""
    for runroot in {c.runroot for c in containers}:
        if runroot.parent == Path(tempfile.gettempdir()) and not in_use(runroot):
            unmount_under(runroot)
            shutil.rmtree(runroot, ignore_errors=True)
    for root in {c.root for c in containers}:
        orphan_root = not any((root / "libpod" / name).exists() for name in DATABASES)
        if root.exists() and orphan_root and not in_use(root):
            # The state folder was removed around these mounts; what is left is only theirs.
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)
            with contextlib.suppress(OSError):
                root.parent.rmdir()  # <state>/podman, when nothing else is in it


# -- forwarding whose container is gone -----------------------------------------------------
# A network being set up has its cache before its conmon starts: only older caches are leaks.
LEAK_AGE = 60.0
ENVIRONMENT_PREFIX = "gantry-"


def _cni_name(cache: Mapping[str, Any]) -> str:
    for key, value in cache.get("cniArgs") or []:
        if key == "K8S_POD_NAME":
            return str(value)
    return ""


def leaked_forwarding(now: float, live_ids: set[str]) -> list[tuple[Path, str, str]]:
    """CNI caches of Gantry containers (``gantry-...``) that publish ports and no longer run.

    What a container killed together with its conmon leaves: nothing ran its cleanup.
    """
    leaks = []
    for path in sorted(CNI_RESULTS.glob("*")):
        cache = _read_cache(path)
        container_id, name = str(cache.get("containerId", "")), _cni_name(cache)
        ports = (cache.get("capabilityArgs") or {}).get("portMappings")
        if not (container_id and name.startswith(ENVIRONMENT_PREFIX) and ports):
            continue
        with contextlib.suppress(OSError):
            if container_id in live_ids or now - path.stat().st_mtime < LEAK_AGE:
                continue
            if _runtime_alive(container_id):
                continue
            leaks.append((path, name, container_id))
    return leaks


def forwarding_rules() -> str:
    """The NAT table as ``iptables-save`` prints it (read only: to say what was left)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(
            ["iptables-save", "-t", "nat"], capture_output=True, text=True, timeout=30, check=False
        )
        return result.stdout
    return ""


def _runtime_alive(container_id: str) -> bool:
    """True when runc still runs the container (its monitor may be gone, the container not)."""
    state = _read_cache(Path("/run/runc") / container_id / "state.json")
    pid = state.get("init_process_pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leaked_forwarding(path: Path) -> list[str]:
    cache = _read_cache(path)
    netns = _netns(cache)
    container_id = str(cache.get("containerId", ""))
    if (Path("/run/runc") / container_id).exists():
        subprocess.run(
            ["runc", "delete", "--force", container_id],
            capture_output=True,
            timeout=60,
            check=False,
        )
    errors = cni_delete(path)
    _remove_netns(netns)
    return errors
