"""Faults of the receiver's delivery store: locked by another process, and its disk full.

The smallest real setup that shows them: the receiver served by uvicorn over a real SQLite
store, no dispatch (these faults are the receiver's; Prefect plays no part). Each test says
what GitHub sees (the HTTP status and body), that nothing was half-written (SQLite's own
integrity check, no row for the refused delivery) and that GitHub's redelivery is stored once.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.bounded import integrity, rows_with_id
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver, receiver_settings
from webhooks.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
URL_PATH = "/webhooks/github"
# Longer than any store timeout of the receiver: the answer must come, and come from it.
ANSWER_DEADLINE = 90.0
UNAVAILABLE = {"error": "delivery store unavailable"}

# Another process that takes SQLite's write lock and holds it until it is killed.
LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


def post(http: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http.post(URL_PATH, content=body, headers=headers)


def hold_lock(store_file: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(store_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    # readline returns at "locked" or at the holder's exit (an empty line): bounded either way.
    line = holder.stdout.readline()
    assert line.strip() == "locked", f"the lock holder did not lock the store: {line!r}"
    return holder


def test_a_locked_store_answers_503_writes_nothing_and_stores_the_redelivery_once(
    tmp_path: Path,
) -> None:
    settings = receiver_settings(tmp_path)
    store_file = tmp_path / "webhooks.db"
    delivery_id = payloads.new_delivery_id()
    body, headers = payloads.signed("push", payloads.push(), delivery_id=delivery_id)
    with (
        ServedReceiver(settings, dispatch=False) as served,
        httpx.Client(base_url=served.url, timeout=ANSWER_DEADLINE) as http,
    ):
        holder = hold_lock(store_file)
        try:
            refused = post(http, body, headers)
            # Answered while the lock is still held: the receiver gave up, not the lock.
            assert holder.poll() is None
        finally:
            # The holder dies mid-transaction, as a crashed tool would: SQLite drops its lock.
            holder.kill()
            holder.wait(10)
        assert refused.status_code == 503
        assert refused.json() == UNAVAILABLE
        assert served.store.get(delivery_id) is None
        assert integrity(store_file) == "ok"

        # GitHub redelivers (same X-GitHub-Delivery): stored now, once.
        accepted = post(http, body, headers)
        assert accepted.status_code == 202
        assert accepted.json()["status"] == "accepted"
        again = post(http, body, headers)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert rows_with_id(store_file, delivery_id) == 1
    assert integrity(store_file) == "ok"


# Room for the store and a few deliveries, and little else.
TMPFS_SIZE = "1m"


@pytest.fixture
def small_state_folder(tmp_path: Path) -> Iterator[Path]:
    """A state folder on a 1 MiB tmpfs of its own, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the state folder needs root")
    folder = tmp_path / "state"
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(folder)],
        check=True,
        timeout=30,
    )
    try:
        yield folder
    finally:
        # A store connection the test did not close (a failing test's) keeps the mount busy:
        # detach it then, so the tmpfs goes once the last file on it is closed.
        gc.collect()
        if subprocess.run(["umount", str(folder)], timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True, timeout=30)


def fill(folder: Path) -> Path:
    """Write a file until the folder's file system has no block left; the file is returned."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return filler


def large_push() -> dict[str, Any]:
    # A push with a long commit list is large; here one field stands for it (~200 KB), more
    # than the write-ahead log has room for once the disk is full.
    payload = payloads.push()
    payload["commits"][0]["message"] = "x" * 200_000
    return payload


def test_a_full_disk_answers_503_keeps_the_store_whole_and_recovers_when_space_returns(
    small_state_folder: Path,
) -> None:
    settings = receiver_settings(small_state_folder)
    store_file = small_state_folder / "webhooks.db"
    earlier = payloads.new_delivery_id()
    delivery_id = payloads.new_delivery_id()
    body, headers = payloads.signed("push", large_push(), delivery_id=delivery_id)
    store = open_store(settings.store_url)
    with (
        contextlib.closing(store),
        ServedReceiver(settings, store, dispatch=False) as served,
        httpx.Client(base_url=served.url, timeout=ANSWER_DEADLINE) as http,
    ):
        first = post(http, *payloads.signed("push", payloads.push(), delivery_id=earlier))
        assert first.status_code == 202

        filler = fill(small_state_folder)
        refused = post(http, body, headers)
        assert refused.status_code == 503
        assert refused.json() == UNAVAILABLE
        assert served.store.get(delivery_id) is None
        assert integrity(store_file) == "ok"
        kept = served.store.get(earlier)
        assert kept is not None and kept.status == "pending"

        filler.unlink()
        accepted = post(http, body, headers)
        assert accepted.status_code == 202
        assert accepted.json()["status"] == "accepted"
        again = post(http, body, headers)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        stored = served.store.get(delivery_id)
        assert stored is not None and len(stored.payload) == len(body)
    assert rows_with_id(store_file, delivery_id) == 1
    assert rows_with_id(store_file, earlier) == 1
    assert integrity(store_file) == "ok"
