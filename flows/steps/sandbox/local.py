"""The local step runner: each repository command in a bubblewrap sandbox on this machine.

Chosen over a container on the stack's Podman engine because it starts in ~40 ms instead of
~0.35 s per step (both measured here; `make bench` prints the figure) and needs no image: the
default toolchain is the host's own ``/usr`` plus the worker's Python prefix and venv, all
read-only. What the sandbox gets, and why each part is there:

- ``--unshare-all``: its own PID, mount, network, IPC, UTS, cgroup and user namespaces. ``/proc``
  lists only its own processes (no ``/proc/<pid>/environ`` of the worker), the network has only
  its own loopback (no Prefect API, receiver, registry), and when its init dies every process in
  it dies, so a timeout or a cancelled run leaves nothing (``--die-with-parent`` ties the init to
  bubblewrap, which we kill).
- Mounts: ``/usr`` (and the /bin, /lib... symlinks), a short list of ``/etc`` files Python and
  git read, the Python prefixes, a private ``/tmp``, and the checkout read-write at ``/workspace``.
  Not the project folder (the venv sits inside it, so only the venv folder is bound and the
  editable install's ``.pth`` points at an empty directory), not the state folder (checkouts live
  in it, which is why the checkout is bound at a neutral path), no engine socket, no ``/root``.
- ``--clearenv``: only PATH, HOME=/tmp, CI=true and the step's declared environment.
- uid/gid 65534 inside a user namespace, no capabilities, no_new_privs, nosuid mounts.
- Limits: cgroup v1 groups (see ``cgroups.py``); rlimits through ``prlimit`` when not writable.
- Network "target": see ``relay.py``; "outside": slirp4netns with no route to host loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

from core.settings import StackSettings
from flows.logs import StepLogger
from flows.steps.proc import TAIL_LINES, ProcResult, pump_lines
from flows.steps.sandbox import cgroups
from flows.steps.sandbox.base import SandboxError, StepSpec
from flows.steps.sandbox.network import open_outside, serve_target

BWRAP = "bwrap"
CHECKOUT = Path("/workspace")
RUN_DIR = Path("/run/gantry")
NAME_PREFIX = "gantry-sbx-"
SANDBOX_UID = 65534
# A tmpfs of the sandbox's own, gone with it: not the host's /tmp.
SANDBOX_TMP = "/tmp"  # noqa: S108
# Read by Python, git, TLS and name lookups; the rest of /etc (shadow, ssh keys, the stack's own
# config) stays out. /etc/alternatives is needed because many /usr/bin names point into it.
ETC_ENTRIES = (
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "gitconfig",
    "mime.types",
    "services",
    "protocols",
    "os-release",
)


def runtime_root() -> Path:
    """Where the trusted side keeps each sandbox's folder (meta, target socket); never bound."""
    root = Path(tempfile.gettempdir()) / f"gantry-sandboxes-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def python_prefixes() -> list[Path]:
    """The worker's interpreter prefix and venv (so ``python -m pytest`` works); not /usr's."""
    state = StackSettings().state_dir
    found: list[Path] = []
    for prefix in dict.fromkeys((Path(sys.base_prefix), Path(sys.prefix))):
        if prefix == Path("/usr") or prefix.is_relative_to("/usr"):
            continue
        if state.is_relative_to(prefix.resolve()):
            raise SandboxError(f"the Python prefix {prefix} holds the state folder; not bound")
        found.append(prefix)
    return found


def toolchain_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    etc = [Path("/etc") / e for e in ETC_ENTRIES] + sorted(Path("/etc").glob("python3*"))
    for path in etc:
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    for prefix in python_prefixes():
        args += ["--ro-bind", str(prefix), str(prefix)]
    return args


def git_dir_args(workspace: Path) -> list[str]:
    """The checkout's ``.git`` read-only: the trusted side runs git in this checkout after the
    step (cache keys, commit times), and a step that could write ``.git/config`` or hooks
    (``core.fsmonitor``, ``core.hooksPath``) would have git run its code with the worker's
    powers."""
    git_dir = workspace.resolve() / ".git"
    return ["--ro-bind", str(git_dir), str(CHECKOUT / ".git")] if git_dir.exists() else []


def sandbox_path() -> str:
    dirs = [str(p / "bin") for p in reversed(python_prefixes())]
    return ":".join([*dirs, "/usr/local/bin", "/usr/bin", "/bin"])


def _interpreter() -> str:
    """A Python for the in-sandbox relay: the worker's own, bound read-only with its prefix."""
    return os.path.realpath(sys.executable)


def _read_info(fd: int) -> int:
    """bubblewrap's ``--info-fd`` JSON: the outer pid of the sandbox's init."""
    data = b""
    with os.fdopen(fd, "rb", buffering=0) as stream:
        while chunk := stream.read(4096):
            data += chunk
            with contextlib.suppress(ValueError):
                return int(json.loads(data)["child-pid"])
    raise SandboxError("bubblewrap exited before the sandbox was made")


class LocalRunner:
    """``StepRunner`` on this machine with bubblewrap; see the module docstring."""

    name = "local"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    def _folder(self) -> Path:
        return self.root or runtime_root()

    def bwrap_argv(
        self, spec: StepSpec, name: str, binds: list[str], env: Mapping[str, str]
    ) -> list[str]:
        args = [
            BWRAP,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            # The name doubles as a marker in the argv, so a reaper can tell our processes.
            "--hostname",
            name,
            # The private /tmp first: a worker whose venv lives under /tmp (a CI clone) binds
            # it on top afterwards; the other way round the tmpfs would hide the toolchain.
            "--tmpfs",
            SANDBOX_TMP,
            *toolchain_args(),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--bind",
            str(spec.workspace.resolve()),
            str(CHECKOUT),
            *git_dir_args(spec.workspace),
            *binds,
            # The sandbox's own root (a tmpfs holding the mount points) is read-only too.
            "--remount-ro",
            "/",
            "--chdir",
            str(CHECKOUT),
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
            "--clearenv",
        ]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args

    async def run(self, spec: StepSpec, logger: StepLogger, prefix: str = "") -> ProcResult:
        if spec.image is not None:
            raise SandboxError(
                f"image {spec.image!r}: the local runner runs the default toolchain only; "
                "remove [sandbox] image or use the kubernetes runner"
            )
        if shutil.which(BWRAP) is None:
            raise SandboxError(
                "bubblewrap (bwrap) is not installed: deployments/system_packages.sh"
            )
        name = f"{NAME_PREFIX}{secrets.token_hex(8)}"
        folder = self._folder() / name
        folder.mkdir(mode=0o700)
        meta = {"name": name, "labels": dict(spec.labels), "started": time.time()}
        (folder / "meta.json").write_text(json.dumps(meta))
        try:
            return await self._run(spec, logger, prefix, name, folder)
        finally:
            await asyncio.to_thread(cgroups.remove_group, name)
            shutil.rmtree(folder, ignore_errors=True)

    async def _run(
        self, spec: StepSpec, logger: StepLogger, prefix: str, name: str, folder: Path
    ) -> ProcResult:
        args = tuple(spec.argv)
        env = {"PATH": sandbox_path(), "HOME": SANDBOX_TMP, **spec.env, "CI": "true"}
        binds: list[str] = []
        command = list(args)
        group = cgroups.open_group(name, spec.limits)
        if group is None:
            # No writable cgroups: rlimits bound memory per process and processes per uid only.
            limits = spec.limits
            memory = limits.memory_mb * 1024 * 1024
            command = ["prlimit", f"--as={memory}", f"--nproc={limits.processes}", "--", *command]
            logger.warning("%scgroups not writable: limits are per-process rlimits", prefix)
        async with AsyncExitStack() as stack:
            if spec.network == "target" and not spec.target_url:
                raise SandboxError('network "target" needs a target_url')
            # An E2E step that also opted into "outside" still reaches its target the same way.
            if spec.target_url and spec.network in ("target", "outside"):
                target = await stack.enter_async_context(serve_target(spec.target_url, folder))
                env["GANTRY_TARGET_URL"] = target.inner_url
                binds += ["--ro-bind", str(folder / "hosts"), "/etc/hosts"]
                binds += ["--bind", str(target.socket), str(RUN_DIR / "target.sock")]
                relay = Path(__file__).with_name("relay.py")
                binds += ["--ro-bind", str(relay), str(RUN_DIR / "relay.py")]
                command = [
                    _interpreter(),
                    "-I",
                    "-S",
                    str(RUN_DIR / "relay.py"),
                    str(target.inner_port),
                    str(RUN_DIR / "target.sock"),
                    "--",
                    *command,
                ]
            if spec.network == "outside":
                (folder / "resolv.conf").write_text("nameserver 10.0.2.3\n")
                binds += ["--ro-bind", str(folder / "resolv.conf"), "/etc/resolv.conf"]
            info_r, info_w = os.pipe()
            block_r, block_w = os.pipe()
            argv = self.bwrap_argv(spec, name, binds, env)
            argv += ["--info-fd", str(info_w), "--block-fd", str(block_r), "--", *command]
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    pass_fds=(info_w, block_r),
                    start_new_session=True,
                )
            finally:
                os.close(info_w)
                os.close(block_r)
            try:
                return await self._supervise(
                    spec, logger, prefix, proc, args, started, info_r, block_w, group, stack
                )
            finally:
                os.close(block_w)
                await _end(proc)

    async def _supervise(
        self,
        spec: StepSpec,
        logger: StepLogger,
        prefix: str,
        proc: asyncio.subprocess.Process,
        args: tuple[str, ...],
        started: float,
        info_r: int,
        block_w: int,
        group: cgroups.Group | None,
        stack: AsyncExitStack,
    ) -> ProcResult:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            init_pid = await asyncio.wait_for(asyncio.to_thread(_read_info, info_r), 30)
        except (SandboxError, TimeoutError) as exc:
            out = (await proc.stdout.read()).decode(errors="replace") if proc.stdout else ""
            raise SandboxError(f"the sandbox could not be made: {out.strip() or exc}") from None
        # The init is parked on --block-fd: it is moved into the limits and given its network
        # before the command exists, so nothing it starts is ever outside either.
        if group is not None:
            try:
                group.add(init_pid)
            except OSError as exc:
                raise SandboxError(f"cannot apply the limits: {exc}") from exc
        if spec.network == "outside":
            await stack.enter_async_context(open_outside(init_pid))
        # The caller closes block_w, once: closing it here as well would close whatever file
        # another stage (a build, a report) had been given the same descriptor number since.
        os.write(block_w, b"go")
        timed_out = False
        try:
            await asyncio.wait_for(
                asyncio.gather(pump_lines(proc, tail, logger, prefix), proc.wait()),
                timeout=spec.timeout,
            )
        except TimeoutError:
            timed_out = True
            logger.error("%skilled after the %.0f s timeout", prefix, spec.timeout)
        seconds = time.monotonic() - started
        exit_code = None if timed_out else proc.returncode
        error = None
        last = tail[-1] if tail else ""
        # Worded as run_argv words it: the same missing tool reads the same, sandbox or not.
        if exit_code in (1, 126, 127) and last.startswith(f"bwrap: execvp {args[0]}"):
            if last.endswith("No such file or directory"):
                error = f"command not found: {args[0]!r} is not on PATH"
            else:
                error = f"command not executable: {args[0]!r}"
        return ProcResult(
            args, exit_code, seconds, "\n".join(tail), timed_out=timed_out, error=error
        )

    async def reap(self, labels: Mapping[str, str] | None = None) -> list[str]:
        """Kill and remove leftover sandboxes (a crashed worker's), all or those with ``labels``."""
        root = self._folder()
        reaped: list[str] = []
        for folder in sorted(root.glob(f"{NAME_PREFIX}*")):
            try:
                meta = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {"labels": {}}
            have = meta.get("labels", {})
            if labels is not None and any(have.get(k) != v for k, v in labels.items()):
                continue
            _kill_marked(folder.name)
            await asyncio.to_thread(cgroups.remove_group, folder.name)
            shutil.rmtree(folder, ignore_errors=True)
            reaped.append(folder.name)
        if labels is None:
            # Groups whose folder is gone (removed by hand, another tmp): still Gantry's.
            for name in cgroups.group_names():
                if name.startswith(NAME_PREFIX) and name not in reaped:
                    _kill_marked(name)
                    await asyncio.to_thread(cgroups.remove_group, name)
                    reaped.append(name)
        return reaped


def _kill_marked(name: str) -> None:
    """SIGKILL each bubblewrap whose argv carries ``--hostname name``; its sandbox dies with it."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(BWRAP.encode()) and name.encode() in argv:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Kill bubblewrap (its init follows through --die-with-parent, then the whole PID ns)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # Shielded: a cancelled run must still wait for the kill to land before it unwinds.
    with contextlib.suppress(TimeoutError):
        await asyncio.shield(asyncio.wait_for(proc.wait(), 10))
