"""Bounded waits for the fault suite: every wait has a deadline and says what it waited for."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


class DeadlineExceeded(AssertionError):
    """A condition the fault test waits for did not hold before its deadline."""


def wait_for(check: Callable[[], bool], what: str, timeout: float, interval: float = 0.2) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


async def await_until(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float, interval: float = 0.5
) -> None:
    """The async ``wait_for``: ``check`` is awaited until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(interval)


def integrity(path: Path) -> str:
    """SQLite's own verdict on a store file, read through a read-only connection."""
    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(row[0]) for row in rows)


def rows_with_id(path: Path, delivery_id: str) -> int:
    """How many rows of the store's deliveries table carry ``delivery_id``."""
    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30) as db:
        query = "SELECT count(*) FROM deliveries WHERE id = ?"
        (count,) = db.execute(query, (delivery_id,)).fetchone()
    return int(count)
