"""Loopback ports and waiting: what the stack, the deploy targets, the receiver and tests share.

Ports are handed out on loopback only; ``free_port_block`` stays below the kernel's ephemeral
range so that a port it hands out is still free when a container publishes it.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path


class StackError(RuntimeError):
    """A part of the local stack could not be started, reached or stopped."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_blocks_handed_out: set[int] = set()


def ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux default 32768)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(size: int, host: str = "127.0.0.1", low: int = 20000) -> int:
    """The first of ``size`` consecutive free ports, below the kernel's ephemeral range.

    For throwaway stacks, whose local deploy targets give each service the next pair of ports.
    Ports below the ephemeral range are never taken by an outgoing connection, so they are still
    free when a container publishes them; and one process never hands out a port twice.
    """
    high = ephemeral_floor() - size
    if high <= low:
        raise StackError(f"no room for {size} ports between {low} and the ephemeral range")
    for _ in range(200):
        base = random.randrange(low, high)  # noqa: S311 - spreading ports, not security
        block = range(base, base + size)
        if _blocks_handed_out.intersection(block):
            continue
        if all(port_is_free(host, port) for port in block):
            _blocks_handed_out.update(block)
            return base
    raise StackError(f"no {size} consecutive free ports between {low} and {high + size}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and throwaway services)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
