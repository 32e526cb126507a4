"""Waiting against a deadline, and finding processes, for tests of runs and stacks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], seconds: float) -> T:
    """Poll until ``probe`` answers (not None, not False, not empty); fail naming ``what`` at
    the deadline. An empty list is no answer: ``pids_with(marker)`` finding nothing yet must
    keep the wait going, not end it."""
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        empty = isinstance(value, Sized) and not isinstance(value, str) and len(value) == 0
        if value is not None and value is not False and not empty:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.2)


def pids_with(needle: str) -> list[int]:
    """Processes whose command line holds ``needle`` (not this one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append(int(entry.name))
    return found
