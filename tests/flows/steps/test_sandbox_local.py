"""The local sandbox, with real bubblewrap: what a repository's command can and cannot reach."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import StackSettings
from flows.config import Sandbox
from flows.steps.proc import ProcResult
from flows.steps.sandbox import cgroups
from flows.steps.sandbox.base import Limits, StepSpec
from flows.steps.sandbox.local import LocalRunner, python_prefixes
from flows.steps.sandbox.select import reap_stack_leftovers, run_step
from tests.flows.steps.probe_repo import make_probe_repo, make_unittest_repo

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

LOG = logging.getLogger("test.sandbox")
PROJECT = Path(__file__).resolve().parents[3]
SECRET = f"s3cret-{uuid.uuid4().hex}"


def run(spec: StepSpec, runner: LocalRunner | None = None) -> ProcResult:
    return asyncio.run((runner or LocalRunner()).run(spec, LOG))


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on the host's loopback, standing in for the Prefect API or the registry."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.fixture
def engine_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "engine" / "podman.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        yield path


@pytest.fixture
def secret_process() -> Iterator[int]:
    """A host process whose environment holds a secret, like the worker's."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={"GANTRY_WEBHOOK_SECRET": SECRET},
    )
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def probed(
    tmp_path: Path, listener: int, engine_socket: Path, secret_process: int
) -> dict[str, object]:
    state = tmp_path / "state"
    (state / "prefect").mkdir(parents=True)
    (state / "webhooks.db").write_text("")
    checkout = make_probe_repo(tmp_path / "checkout")
    args = {
        "port": listener,
        "socket": str(engine_socket),
        "pid": secret_process,
        "secret": SECRET,
        "state": str(state),
        "project": str(PROJECT),
        "outside": [str(tmp_path / "outside.txt"), "/usr/probe", "/etc/probe", "/probe"],
    }
    spec = StepSpec(
        argv=("python3", "probe.py", json.dumps(args)),
        workspace=checkout,
        timeout=60,
        env={"DECLARED": "yes"},
    )
    result = run(spec)
    assert result.ok, result.tail
    found: dict[str, object] = json.loads(result.tail.splitlines()[-1])
    found["_outside_file"] = (tmp_path / "outside.txt").exists()
    found["_checkout_file"] = (checkout / "probe-wrote-this").exists()
    return found


def test_check_cannot_connect_to_host_loopback_services(probed: dict[str, object]) -> None:
    assert probed["tcp"] == "ConnectionRefusedError"


def test_check_cannot_read_another_process_environment(probed: dict[str, object]) -> None:
    # The host's pid is not in the sandbox's PID namespace at all.
    assert probed["environ"] in {"FileNotFoundError", "PermissionError"}
    assert probed["secret_in_any_environ"] is False


def test_check_cannot_see_state_folder_nor_project(probed: dict[str, object]) -> None:
    assert probed["state_exists"] is False
    assert probed["project_code"] is False


def test_check_cannot_reach_engine_socket(probed: dict[str, object]) -> None:
    assert probed["engine_socket"] == "FileNotFoundError"


def test_check_writes_only_inside_its_checkout(probed: dict[str, object]) -> None:
    assert all(outcome != "written" for outcome in probed["write_outside"])  # type: ignore[attr-defined]
    assert probed["_outside_file"] is False
    assert probed["write_checkout"] == "written"
    assert probed["_checkout_file"] is True


def test_check_runs_as_nobody_with_only_declared_env_and_own_tmp(
    probed: dict[str, object],
) -> None:
    assert probed["uid"] == 65534
    env = probed["env"]
    assert isinstance(env, dict)
    assert env["CI"] == "true"
    assert env["DECLARED"] == "yes"
    assert env["HOME"] == "/tmp"
    # Python and the shell add a few of their own (PWD, LC_CTYPE); nothing of the worker's.
    assert set(env) <= {"CI", "DECLARED", "HOME", "PATH", "PWD", "LC_CTYPE"}
    # Empty but for the folders leading to the worker's toolchain when that lives in /tmp.
    toolchain = {
        p.relative_to("/tmp").parts[0] for p in python_prefixes() if p.is_relative_to("/tmp")
    }
    tmp = probed["tmp"]
    assert isinstance(tmp, list) and set(tmp) == toolchain


def _host_pids_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    marker = f"gantry-test-{uuid.uuid4().hex}"
    # A child that daemonizes a grandchild (new session, parent gone), then hangs.
    script = (
        "import subprocess, sys, time\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1]]\n"
        "subprocess.Popen(sleeper, start_new_session=True)\n"
        "subprocess.Popen([sys.executable, '-c',"
        " 'import subprocess,sys; subprocess.Popen(sys.argv[1:], start_new_session=True)',"
        " *sleeper])\n"
        "time.sleep(600)\n"
    )
    spec = StepSpec(argv=("python3", "-c", script, marker), workspace=tmp_path, timeout=2, env={})

    seen: list[int] = []

    async def scenario() -> ProcResult:
        task = asyncio.create_task(LocalRunner().run(spec, LOG))
        for _ in range(50):
            await asyncio.sleep(0.05)
            seen[:] = _host_pids_with(marker)
            if len(seen) >= 3:
                break
        return await task

    result = asyncio.run(scenario())
    assert result.timed_out
    assert len(seen) >= 3, "the grandchildren never started"
    assert _host_pids_with(marker) == []


def test_cancelled_step_leaves_no_process(tmp_path: Path) -> None:
    marker = f"gantry-test-{uuid.uuid4().hex}"
    spec = StepSpec(
        argv=("python3", "-c", "import time; time.sleep(600)", marker),
        workspace=tmp_path,
        timeout=600,
    )

    async def scenario() -> None:
        task = asyncio.create_task(LocalRunner().run(spec, LOG))
        for _ in range(50):
            await asyncio.sleep(0.05)
            if _host_pids_with(marker):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert _host_pids_with(marker) == []


def test_process_count_limit_stops_a_fork_bomb(tmp_path: Path) -> None:
    script = (
        "import subprocess\n"
        "procs = []\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        procs.append(subprocess.Popen(['sleep', '30']))\n"
        "    print('spawned', len(procs))\n"
        "except OSError as exc:\n"
        "    print('refused after', len(procs), type(exc).__name__)\n"
    )
    spec = StepSpec(
        argv=("python3", "-c", script), workspace=tmp_path, timeout=30, limits=Limits(processes=16)
    )
    result = run(spec)
    assert result.ok, result.tail
    assert "refused after" in result.tail


def test_plain_unittest_repository_passes_with_default_toolchain(tmp_path: Path) -> None:
    repo = make_unittest_repo(tmp_path / "repo")
    argv = ["python3", "-m", "unittest", "discover", "-s", "tests", "-v"]
    result = asyncio.run(run_step(argv, repo, 60, LOG, sandbox=Sandbox()))
    assert result.ok, result.tail
    assert "OK" in result.tail


def test_image_toolchain_is_refused_by_local_runner_with_a_clear_error(tmp_path: Path) -> None:
    result = asyncio.run(
        run_step(["true"], tmp_path, 10, LOG, sandbox=Sandbox(image="python:3.12-slim"))
    )
    assert not result.ok
    assert result.error is not None and "default toolchain only" in result.error


@pytest.fixture
def target() -> Iterator[str]:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the target"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


E2E_PROBE = """
import json, os, socket, sys, urllib.request
url = os.environ["GANTRY_TARGET_URL"]
body = urllib.request.urlopen(url + "/healthz", timeout=5).read().decode()
s = socket.socket(); s.settimeout(1)
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); other = "connected"
except OSError as exc:
    other = type(exc).__name__
print(json.dumps({"body": body, "other": other}))
"""


def test_e2e_reaches_its_target_and_nothing_else(
    tmp_path: Path, target: str, listener: int
) -> None:
    spec = StepSpec(
        argv=("python3", "-c", E2E_PROBE, str(listener)),
        workspace=tmp_path,
        timeout=30,
        network="target",
        target_url=target,
    )
    result = run(spec)
    assert result.ok, result.tail
    found = json.loads(result.tail.splitlines()[-1])
    assert found["body"] == "hello from the target"
    assert found["other"] == "ConnectionRefusedError"


def test_reap_kills_a_leftover_sandbox_by_its_flow_run_label(tmp_path: Path) -> None:
    runner = LocalRunner(root=tmp_path / "runner")
    runner.root.mkdir()  # type: ignore[union-attr]
    marker = f"gantry-test-{uuid.uuid4().hex}"
    labels = {"gantry.flow-run-id": str(uuid.uuid4())}
    spec = StepSpec(
        argv=("python3", "-c", "import time; time.sleep(600)", marker),
        workspace=tmp_path,
        timeout=600,
        labels=labels,
    )

    async def scenario() -> list[str]:
        task = asyncio.create_task(runner.run(spec, LOG))
        for _ in range(50):
            await asyncio.sleep(0.05)
            if _host_pids_with(marker):
                break
        assert await runner.reap({"gantry.flow-run-id": "another run"}) == []
        reaped = await runner.reap(labels)
        result = await asyncio.wait_for(task, 10)
        assert not result.ok
        return reaped

    reaped = asyncio.run(scenario())
    assert len(reaped) == 1
    deadline = time.monotonic() + 5
    while _host_pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_pids_with(marker) == []


def test_worker_venv_python_and_tools_work_inside(tmp_path: Path) -> None:
    # The sample service runs `python -m pytest/ruff/mypy` from the worker's venv.
    spec = StepSpec(argv=("python", "-m", "pytest", "--version"), workspace=tmp_path, timeout=60)
    result = run(spec)
    assert result.ok, result.tail


OUTSIDE_PROBE = """
import json, socket, sys
found = {}
for host in ("127.0.0.1", "10.0.2.2", "169.254.169.254"):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((host, int(sys.argv[1]))); found[host] = "connected"
    except OSError as exc:
        found[host] = type(exc).__name__
print(json.dumps(found))
"""


@pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns")
def test_outside_network_has_no_route_to_host_loopback_nor_metadata(
    tmp_path: Path, listener: int
) -> None:
    spec = StepSpec(
        argv=("python3", "-c", OUTSIDE_PROBE, str(listener)),
        workspace=tmp_path,
        timeout=30,
        network="outside",
    )
    result = run(spec)
    assert result.ok, result.tail
    found = json.loads(result.tail.splitlines()[-1])
    # 10.0.2.2 is slirp4netns's gateway, which would be the host's loopback without
    # --disable-host-loopback; the metadata address is blackholed inside.
    assert all(outcome != "connected" for outcome in found.values()), found


def test_a_stack_reaps_its_own_leftover_sandboxes_and_no_other_stacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two stacks on one machine (two state folders): a worker starting for one of them must
    # not kill the other's running steps.
    ours, theirs = StackSettings(home=tmp_path / "ours"), StackSettings(home=tmp_path / "theirs")
    markers = {name: f"gantry-test-{uuid.uuid4().hex}" for name in ("ours", "theirs")}

    def step(name: str) -> Coroutine[Any, Any, ProcResult]:
        monkeypatch.setenv("GANTRY_HOME", str(tmp_path / name))
        return run_step(
            ("python3", "-c", "import time; time.sleep(600)", markers[name]),
            tmp_path,
            600,
            LOG,
            sandbox=Sandbox(),
        )

    async def scenario() -> tuple[list[str], list[str]]:
        mine = asyncio.create_task(step("ours"))
        await asyncio.sleep(0)  # the task reads GANTRY_HOME when it starts
        other = asyncio.create_task(step("theirs"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if all(_host_pids_with(m) for m in markers.values()):
                break
        reaped = await reap_stack_leftovers(ours)
        assert not (await asyncio.wait_for(mine, 10)).ok
        assert _host_pids_with(markers["theirs"]), "the other stack's step was killed"
        other_reaped = await reap_stack_leftovers(theirs)
        await asyncio.wait_for(other, 10)
        return reaped, other_reaped

    reaped, other_reaped = asyncio.run(scenario())
    assert len(reaped) == 1 and len(other_reaped) == 1 and reaped != other_reaped
    deadline = time.monotonic() + 5
    while any(_host_pids_with(m) for m in markers.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m for m in markers.values() if _host_pids_with(m)] == []


def test_a_step_cannot_change_the_git_repository_the_trusted_side_reads(tmp_path: Path) -> None:
    # The worker runs git in the checkout after a step: a core.fsmonitor written into
    # .git/config would be the step's code run by git outside the sandbox.
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    config_before = (checkout / ".git" / "config").read_text()
    script = (
        "import pathlib; p = pathlib.Path('.git/config');"
        "p.write_text(p.read_text() + '[core]\\n\\tfsmonitor = /tmp/evil\\n')"
    )
    result = run(StepSpec(argv=("python3", "-c", script), workspace=checkout, timeout=30))
    assert not result.ok
    assert "Read-only file system" in result.tail
    assert (checkout / ".git" / "config").read_text() == config_before
    # The rest of the checkout stays writable.
    write = "import pathlib; pathlib.Path('out.txt').write_text('ok')"
    assert run(StepSpec(argv=("python3", "-c", write), workspace=checkout, timeout=30)).ok
    assert (checkout / "out.txt").read_text() == "ok"


TARGET_URL_PROBE = """
import json, os, socket, urllib.parse, urllib.request
url = os.environ["GANTRY_TARGET_URL"]
host = urllib.parse.urlsplit(url).hostname
body = urllib.request.urlopen(url, timeout=5).read().decode() if host == "localhost" else None
print(json.dumps({"url": url, "address": socket.gethostbyname(host), "body": body}))
"""


@pytest.mark.parametrize(
    ("given", "inside"),
    [
        ("http://staging.gantry.test:8080/app?x=1", "http://staging.gantry.test:8080/app?x=1"),
        ("https://staging.gantry.test:8443/", "https://staging.gantry.test:8443/"),
        ("http://staging.gantry.test/app", "http://staging.gantry.test:18080/app"),
        ("https://staging.gantry.test/", "https://staging.gantry.test:18443/"),
    ],
)
def test_the_target_url_keeps_its_host_name_and_its_port_unless_below_1024(
    tmp_path: Path, given: str, inside: str
) -> None:
    spec = StepSpec(
        argv=("python3", "-c", TARGET_URL_PROBE),
        workspace=tmp_path,
        timeout=30,
        network="target",
        target_url=given,
    )
    result = run(spec)
    assert result.ok, result.tail
    found = json.loads(result.tail.splitlines()[-1])
    # The name leads to the relay inside the sandbox, which leads only to the target.
    assert found == {"url": inside, "address": "127.0.0.1", "body": None}


def test_a_target_named_by_host_name_is_reached_under_that_name(
    tmp_path: Path, target: str
) -> None:
    named = target.replace("127.0.0.1", "localhost") + "/"
    spec = StepSpec(
        argv=("python3", "-c", TARGET_URL_PROBE),
        workspace=tmp_path,
        timeout=30,
        network="target",
        target_url=named,
    )
    result = run(spec)
    assert result.ok, result.tail
    found = json.loads(result.tail.splitlines()[-1])
    assert found == {"url": named, "address": "127.0.0.1", "body": "hello from the target"}


PRIVILEGE_PROBE = """
import json
status = dict(
    line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
)
mounts = [line.split()[4:6] for line in open("/proc/self/mountinfo")]
names = ("CapInh", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs")
print(json.dumps({"status": {n: status[n].strip() for n in names}, "mounts": mounts}))
"""


def test_a_step_has_no_capabilities_no_new_privs_and_only_nosuid_mounts(tmp_path: Path) -> None:
    result = run(StepSpec(argv=("python3", "-c", PRIVILEGE_PROBE), workspace=tmp_path, timeout=30))
    assert result.ok, result.tail
    found = json.loads(result.tail.splitlines()[-1])
    status = found["status"]
    assert [int(status[n], 16) for n in ("CapInh", "CapPrm", "CapEff", "CapAmb")] == [0] * 4
    assert status["NoNewPrivs"] == "1"
    options = {point: set(opts.split(",")) for point, opts in found["mounts"]}
    writable = {point for point, opts in options.items() if "rw" in opts}
    # The checkout and the private /tmp at least: the places a step can drop a setuid file.
    assert {"/workspace", "/tmp"} <= writable
    assert [point for point, opts in options.items() if "nosuid" not in opts] == []


def _group_limits(pid: int) -> dict[str, str] | None:
    """The cgroup v1 limit files of the group ``pid`` is in, read from the host's side; None
    for a process outside the sandboxes' groups (bubblewrap itself carries the marker too)."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            paths[controller] = path
    if cgroups.PARENT not in paths.get("pids", ""):
        return None
    root = cgroups.CGROUP_ROOT
    return {
        name: (root / controller / paths[controller].lstrip("/") / name).read_text().strip()
        for controller, name in (
            ("cpu", "cpu.cfs_quota_us"),
            ("cpu", "cpu.cfs_period_us"),
            ("memory", "memory.limit_in_bytes"),
            ("pids", "pids.max"),
        )
    }


@pytest.mark.skipif(not cgroups.available(), reason="needs writable cgroup v1 controllers")
def test_a_step_runs_inside_its_cpu_memory_and_process_limits(tmp_path: Path) -> None:
    marker = f"gantry-test-{uuid.uuid4().hex}"
    limits = Limits(cpus=0.5, memory_mb=96, processes=32)
    spec = StepSpec(
        argv=("python3", "-c", "import time; time.sleep(600)", marker),
        workspace=tmp_path,
        timeout=600,
        limits=limits,
    )

    async def scenario() -> dict[str, str]:
        task = asyncio.create_task(LocalRunner().run(spec, LOG))
        try:
            for _ in range(100):
                await asyncio.sleep(0.05)
                for pid in _host_pids_with(marker):
                    with contextlib.suppress(OSError):
                        if (group := _group_limits(pid)) is not None:
                            return group
            raise AssertionError("the step never started")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    found = asyncio.run(scenario())
    assert found == {
        "cpu.cfs_quota_us": "50000",
        "cpu.cfs_period_us": "100000",
        "memory.limit_in_bytes": str(96 * 1024 * 1024),
        "pids.max": "32",
    }
    # The memory limit holds the whole step: a step that takes more is killed, not slowed.
    hog = "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); print('kept')"
    result = run(
        StepSpec(argv=("python3", "-c", hog), workspace=tmp_path, timeout=60, limits=limits)
    )
    assert not result.ok
    assert "kept" not in result.tail


LIMITS_PROBE = """
import json
rows = {}
for line in open("/proc/self/limits").read().splitlines()[1:]:
    name, soft = line[:26].strip(), line[26:47].strip()
    rows[name] = soft
print(json.dumps(rows))
"""


def test_without_writable_cgroups_a_step_gets_rlimits_and_the_log_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A cgroup root that does not exist: what a machine with cgroup v2 only or no root has.
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "no-cgroups")
    assert not cgroups.available()
    limits = Limits(cpus=1.0, memory_mb=768, processes=40)
    spec = StepSpec(
        argv=("python3", "-c", LIMITS_PROBE), workspace=tmp_path, timeout=30, limits=limits
    )
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = run(spec)
    assert result.ok, result.tail
    found = json.loads(result.tail.splitlines()[-1])
    assert found["Max address space"] == str(768 * 1024 * 1024)
    assert found["Max processes"] == "40"
    assert any("cgroups not writable" in r.getMessage() for r in caplog.records)
