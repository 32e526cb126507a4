"""The trusted side of a sandbox's network: the "target" relay and the "outside" slirp4netns.

"target": a Unix socket in the sandbox's folder, bound into the sandbox, whose every connection
the trusted side forwards to the one target host:port (and nowhere else); ``relay.py`` inside
listens on the sandbox's own 127.0.0.1 and feeds that socket. The sandbox's ``/etc/hosts`` maps
the target's host name to 127.0.0.1, so the URL, the Host header and TLS names stay as they are.

"outside": slirp4netns gives the sandbox a user-mode NAT (10.0.2.0/24) with
``--disable-host-loopback``; on top, blackhole routes inside the sandbox's network namespace
(set by us, which the sandbox, having no capabilities, cannot undo) drop link-local addresses
(the cloud metadata service) and this host's own addresses, so services bound to 0.0.0.0 on the
host are out of reach as well as those on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from flows.steps.sandbox.base import SandboxError

DEFAULT_PORTS = {"http": 80, "https": 443}
# Ports below 1024 need a capability the sandbox does not have; such a target is relayed from
# a high port inside (the URL inside names it).
LOW_PORT_OFFSET = 18000


@dataclass(frozen=True)
class Target:
    socket: Path
    inner_port: int
    inner_url: str


def rewrite_target(url: str, inner_port: int) -> tuple[str, str | None]:
    """The URL as seen inside, and the host name to map to 127.0.0.1 (None for an address)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        name: str | None = None
        host = "127.0.0.1"
    except ValueError:
        name = host
    netloc = f"{host}:{inner_port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), name


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


@contextlib.asynccontextmanager
async def serve_target(url: str, folder: Path) -> AsyncIterator[Target]:
    """Relay ``folder/target.sock`` to ``url``'s host:port while the sandbox runs."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise SandboxError(f"target URL without a host: {url!r}")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
    host = parts.hostname
    inner_port = port if port >= 1024 else LOW_PORT_OFFSET + port
    inner_url, name = rewrite_target(url, inner_port)
    hosts = "127.0.0.1 localhost\n" + (f"127.0.0.1 {name}\n" if name else "")
    (folder / "hosts").write_text(hosts)
    tasks: set[asyncio.Task[None]] = set()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                end.close()

    def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(connect(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    sock = folder / "target.sock"
    server = await asyncio.start_unix_server(spawn, path=str(sock))
    try:
        yield Target(sock, inner_port, inner_url)
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def _host_addresses() -> list[str]:
    """This machine's IPv4 addresses (from ``ip -j addr``), each to be unreachable inside."""
    result = subprocess.run(
        ["ip", "-j", "-4", "addr"], capture_output=True, text=True, timeout=10, check=False
    )
    if result.returncode != 0:
        raise SandboxError(f"cannot list host addresses: {result.stderr.strip()}")
    return [
        info["local"]
        for link in json.loads(result.stdout)
        for info in link.get("addr_info", [])
        if "local" in info
    ]


def _blackhole(init_pid: int, net: str) -> None:
    netns = f"--net=/proc/{init_pid}/ns/net"
    route = subprocess.run(
        ["nsenter", netns, "ip", "route", "add", "blackhole", net],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if route.returncode != 0:
        raise SandboxError(f"cannot block {net} in the sandbox: {route.stderr.strip()}")


@contextlib.asynccontextmanager
async def open_outside(init_pid: int) -> AsyncIterator[None]:
    """slirp4netns for the sandbox whose init is ``init_pid``; gone when the block exits."""
    for tool in ("slirp4netns", "nsenter", "ip"):
        if shutil.which(tool) is None:
            raise SandboxError(f'network "outside" needs {tool}: deployments/system_packages.sh')
    ready_r, ready_w = os.pipe()
    # slirp4netns exits when the write end of exit-fd closes: also when the worker dies.
    exit_r, exit_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            "slirp4netns",
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            f"--ready-fd={ready_w}",
            f"--exit-fd={exit_r}",
            # By path, so it joins the network namespace only: in "pid" mode it would also join
            # the init's user namespace, which bubblewrap nests below the network namespace's
            # owner once it drops to uid 65534, and setns then fails with EPERM (a race).
            "--netns-type=path",
            f"/proc/{init_pid}/ns/net",
            "tap0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(ready_w, exit_r),
        )
    finally:
        os.close(ready_w)
        os.close(exit_r)
    try:
        ready = await asyncio.wait_for(asyncio.to_thread(os.read, ready_r, 1), 10)
        if ready != b"1":
            err = await proc.stderr.read() if proc.stderr else b""
            raise SandboxError(f"slirp4netns failed: {err.decode(errors='replace').strip()}")
        blocked = ["169.254.0.0/16", *(f"{a}/32" for a in await asyncio.to_thread(_host_addresses))]
        for net in blocked:
            if not net.startswith("127."):
                await asyncio.to_thread(_blackhole, init_pid, net)
        yield
    finally:
        os.close(ready_r)
        os.close(exit_w)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
