"""The README's front door: `gantry demo --manual` waits, `gantry run pr` draws a live table on a
terminal (plain lines elsewhere), and the local stack listens on loopback only."""

from __future__ import annotations

import asyncio
import fcntl
import http.server
import io
import os
import pty
import re
import socket
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.client.schemas.objects import FlowRun
from rich.console import Console

from deployments.cli.console import prefect_settings
from deployments.demo import Demo
from deployments.stack import Stack
from tests.plugins.gitrepo import GitRepo, gantry_toml
from tests.plugins.stack import GANTRY, stack_environment

LOOPBACK = {"127.0.0.1", "::1"}


# -- `gantry demo --manual` waits for your approval ---------------------------------------------
@pytest.fixture
def prefect_api() -> Iterator[tuple[int, list[str]]]:
    """A loopback stand-in for the Prefect API that records every request it is sent."""
    seen: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PATCH = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def test_demo_manual_leaves_the_release_at_its_gate_and_says_how_to_approve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: tuple[int, list[str]]
) -> None:
    port, seen = prefect_api
    monkeypatch.setenv("GANTRY_HOME", str(tmp_path))
    monkeypatch.setenv("GANTRY_PREFECT_PORT", str(port))
    monkeypatch.setenv("GANTRY_PREFECT_AUTH_STRING", "demo:not-a-real-password")
    out, err = io.StringIO(), io.StringIO()
    demo = Demo(Console(file=out, width=400), Console(file=err, width=400), manual=True)
    paused = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="release-at-the-gate")
    with prefect_settings(demo.settings):
        keep_following = asyncio.run(demo.approve(paused))
    # True: the demo goes on following the paused run, i.e. it waits for the operator's answer.
    assert keep_following is True
    text = out.getvalue()
    assert "Waiting for your approval" in text, text + err.getvalue()
    assert f"{demo.settings.prefect_url}/runs/flow-run/{paused.id}" in text
    assert f"gantry approve {paused.id} --key {demo.key}" in text
    # Nothing was asked of the Prefect API: no approval was read, signed or submitted.
    assert seen == []


# -- `gantry run pr`: a live table on a terminal, plain lines otherwise --------------------------
# Rich's Live redraws in place: it moves the cursor up over the previous table and erases it.
REDRAW = re.compile(r"\x1b\[(?:\d*A|2K)")
TABLE_TITLE = re.compile(r"the pr pipeline: (\w+)")


def run_under_pty(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """``argv`` with a pseudo-terminal as stdin, stdout and stderr; its exit code and output."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    process = subprocess.Popen(
        argv, stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True
    )
    os.close(secondary)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=timeout)
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_run_pr_draws_a_live_table_on_a_terminal_and_plain_lines_in_a_pipe(
    local_stack: Stack, make_repo: Callable[[str], GitRepo]
) -> None:
    repo = make_repo("front-door-live")
    # A unit check that takes a moment, so the table is redrawn while the run goes on.
    unit = ["python3", "-c", "import time; time.sleep(2)"]
    sha = repo.commit({"gantry.toml": gantry_toml(lint=None, unit=unit)})
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES", "NO_COLOR"}},
        **stack_environment(local_stack.settings),
        "TERM": "xterm-256color",
    }
    argv = [GANTRY, "run", "pr", "--repo", str(repo.path), "--sha", sha]
    code, screen = run_under_pty(argv, env, timeout=600)
    assert code == 0, screen[-3000:]
    states = TABLE_TITLE.findall(screen)
    # The same table drawn again and again in place as the run's state changed, to its end.
    assert len(states) >= 2 and states[-1] == "Completed", states
    assert len(set(states)) >= 2, states
    assert len(REDRAW.findall(screen)) >= 2, screen[-2000:]
    assert "┏" in screen or "━" in screen  # a rich table, not plain lines

    # The same command into a pipe: one plain line per change, no table, no cursor control.
    piped = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert not REDRAW.search(piped.stderr + piped.stdout)
    assert not TABLE_TITLE.search(piped.stderr)
    assert "\x1b" not in piped.stderr
    changes = [line.strip() for line in piped.stderr.splitlines() if line.startswith("  ")]
    assert any(line.startswith("Completed") for line in changes), piped.stderr


# -- the local stack listens on loopback only ----------------------------------------------------
def _addresses(table: str) -> dict[int, tuple[str, int]]:
    """Listening sockets of a /proc/net/tcp{,6} table: inode -> (address, port)."""
    found: dict[int, tuple[str, int]] = {}
    lines = Path(table).read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if state != "0A":  # LISTEN
            continue
        address, port = local.split(":")
        raw = bytes.fromhex(address)
        # The kernel prints each 32-bit word in host (little-endian) order.
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
        found[inode] = (socket.inet_ntop(family, words), int(port, 16))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = str(fd.readlink())
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _mentions(pid: int, needle: bytes) -> bool:
    for name in ("cmdline", "environ"):
        try:
            if needle in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except OSError:
            continue
    return False


def stack_pids(state_dir: Path) -> set[int]:
    """The processes of a stack: those that name its state folder, and their descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    needle = str(state_dir).encode()
    found = {pid for pid in parents if pid != os.getpid() and _mentions(pid, needle)}
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


def stack_listeners(state_dir: Path) -> set[tuple[str, int]]:
    """Every TCP address a process of the stack listens on, in this host's network namespace
    (a container's own namespace is not the host's)."""
    host_net = Path("/proc/self/ns/net").readlink()
    tables = {**_addresses("/proc/self/net/tcp"), **_addresses("/proc/self/net/tcp6")}
    listening = set()
    for pid in stack_pids(state_dir):
        try:
            if Path(f"/proc/{pid}/ns/net").readlink() != host_net:
                continue
        except OSError:
            continue
        listening |= {tables[inode] for inode in _socket_inodes(pid) if inode in tables}
    return listening


@pytest.mark.slow
def test_the_local_stack_listens_on_loopback_only(local_stack: Stack) -> None:
    settings = local_stack.settings
    listening = stack_listeners(settings.state_dir)
    ports = {port for _, port in listening}
    # The stack's processes were found: the API and UI, the receiver and the registry listen.
    assert {settings.prefect_port, settings.webhook_port, settings.registry_port} <= ports, (
        listening
    )
    assert {address for address, _ in listening} <= LOOPBACK, sorted(listening)
