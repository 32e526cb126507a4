"""`network = "outside"`: a step reaches hosts beyond this machine, where the default has none.

The suite runs offline, so "the internet" is a host of our own beyond this machine: an HTTP
server in a network namespace of its own, on a documentation address (198.51.100.0/24) behind a
veth pair, as a server on another machine would be. It is none of this host's addresses, which
the sandbox must not reach (tests/flows/steps/test_sandbox_local.py proves that side).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.steps.sandbox.base import Network, StepSpec
from flows.steps.sandbox.local import LocalRunner

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
    pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns"),
    pytest.mark.skipif(os.geteuid() != 0, reason="makes a network namespace (needs root)"),
]

LOG = logging.getLogger("test.sandbox.network")
HOST_SIDE, FAR_SIDE = "198.51.100.1", "198.51.100.2"
PAGE = "greetings from beyond this host"

PROBE = """
import json, sys, urllib.request
try:
    found = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
except OSError as exc:
    found = type(exc).__name__ + ": " + str(exc)
print(json.dumps({"found": found}))
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def far_host(tmp_path: Path) -> Iterator[str]:
    """The URL of a page served from a network namespace of its own, beyond a veth pair."""
    tag = secrets.token_hex(3)
    namespace, near, far = f"gantry-far-{tag}", f"gfn{tag}", f"gff{tag}"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "page.txt").write_text(PAGE)
    ip("netns", "add", namespace)
    server: subprocess.Popen[bytes] | None = None
    try:
        ip("link", "add", near, "type", "veth", "peer", "name", far)
        ip("link", "set", far, "netns", namespace)
        ip("addr", "add", f"{HOST_SIDE}/24", "dev", near)
        ip("link", "set", near, "up")
        ip("-n", namespace, "addr", "add", f"{FAR_SIDE}/24", "dev", far)
        ip("-n", namespace, "link", "set", far, "up")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        serve = [sys.executable, "-m", "http.server", "--bind", FAR_SIDE, str(port)]
        server = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *serve, "--directory", str(tmp_path / "www")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as client:
                client.settimeout(1)
                if client.connect_ex((FAR_SIDE, port)) == 0:
                    break
            assert time.monotonic() < deadline, "the far host's server did not start"
            time.sleep(0.1)
        yield f"http://{FAR_SIDE}:{port}/page.txt"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        # Deleting the namespace also deletes the veth pair (and its host-side address).
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def fetch(url: str, workspace: Path, network: Network) -> str:
    spec = StepSpec(
        argv=("python3", "-c", PROBE, url),
        workspace=workspace,
        timeout=60,
        network=network,
    )
    result = asyncio.run(LocalRunner().run(spec, LOG))
    assert result.ok, result.tail
    found: str = json.loads(result.tail.splitlines()[-1])["found"]
    return found


def test_outside_reaches_a_host_beyond_this_one_where_the_default_has_no_network(
    tmp_path: Path, far_host: str
) -> None:
    assert fetch(far_host, tmp_path, "outside") == PAGE
    # The same step without opting in: no network at all, the same address is unreachable.
    offline = fetch(far_host, tmp_path, "none")
    assert PAGE not in offline
    assert offline.startswith("URLError"), offline
