"""Group commit over real HTTP and a real SQLite file: deliveries arriving together share one
commit, each is answered only once ITS row is committed, a failed commit acknowledges none,
no request opens a database connection of its own, and a small load loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from bench.receiver_load import load
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver, receiver_settings
from webhooks.store import SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(120)]
URL_PATH = "/webhooks/github"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def rows(path: Path) -> int:
    with contextlib_closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM deliveries").fetchone()[0])


@contextmanager
def contextlib_closing(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield db
    finally:
        db.close()


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another process's writer holding the file's write lock, as a long transaction does."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def count_commits(store: SqliteStore) -> list[int]:
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda connection: commits.append(1))
    return commits


async def post_prs(http: httpx.AsyncClient, count: int, first: int) -> list[httpx.Response]:
    async def one(number: int) -> httpx.Response:
        body, headers = payloads.signed("pull_request", payloads.pull_request(number=number))
        return await http.post(URL_PATH, content=body, headers=headers)

    return list(await asyncio.gather(*(one(first + i) for i in range(count))))


async def test_deliveries_arriving_together_share_one_commit_and_wait_for_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "webhooks.db"
    store = SqliteStore(path)
    commits = count_commits(store)
    with ServedReceiver(receiver_settings(tmp_path), store, dispatch=False) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            with write_lock_held(path):
                sent = asyncio.create_task(post_prs(http, 20, first=100))
                # All twenty are in, the first batch waiting for the lock: nobody answered.
                await asyncio.sleep(1.0)
                assert not sent.done()
                assert rows(path) == 0
            answers = await sent
    assert [answer.status_code for answer in answers] == [202] * 20
    assert rows(path) == 20
    # The first delivery's batch, then everything that queued behind it: not one each.
    assert 1 <= len(commits) <= 2


async def test_a_failed_commit_acknowledges_none_of_its_batch(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.db"
    store = SqliteStore(path)

    def refuse(connection: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with ServedReceiver(receiver_settings(tmp_path), store, dispatch=False) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            with write_lock_held(path):
                sent = asyncio.create_task(post_prs(http, 10, first=200))
                await asyncio.sleep(0.5)
                # Every commit from here on fails (after its rows were written).
                event.listen(store.engine, "commit", refuse)
            answers = await sent
            event.remove(store.engine, "commit", refuse)
            after = await post_prs(http, 1, first=300)
    assert [answer.status_code for answer in answers] == [503] * 10
    assert rows(path) == 1
    assert after[0].status_code == 202


async def test_requests_reuse_one_connection_rather_than_connect_each(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "webhooks.db")
    connects: list[int] = []
    event.listen(store.engine, "connect", lambda *args: connects.append(1))
    with ServedReceiver(receiver_settings(tmp_path), store, dispatch=False) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            first = await post_prs(http, 1, first=400)
            warmed = len(connects)
            answers = await post_prs(http, 40, first=500)
            for number in range(5):
                answers += await post_prs(http, 1, first=600 + number)
    assert {answer.status_code for answer in [*first, *answers]} == {202}
    assert len(connects) == warmed


async def test_a_small_load_is_acknowledged_and_recorded_whole(tmp_path: Path) -> None:
    # Count and correctness only: the latency figure belongs to `make bench`.
    path = tmp_path / "webhooks.db"
    settings = receiver_settings(tmp_path).model_copy(update={"webhook_repositories": "bench/repo"})
    with ServedReceiver(settings, SqliteStore(path), dispatch=False) as served:
        result = await load(served.url, payloads.SECRET, count=100, rate=100.0, first_number=1)
    assert result["sent"] == 100 and result["lost"] == 0
    assert result["by_status"] == {"202": 100}
    assert result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    with contextlib_closing(sqlite3.connect(path)) as db:
        stored = db.execute(
            "SELECT count(DISTINCT json_extract(payload, '$.number')) FROM deliveries"
            " WHERE status = 'pending' AND event = 'pull_request'"
        ).fetchone()[0]
    assert stored == 100


async def test_the_load_generator_sends_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await load("http://192.0.2.1:8787", payloads.SECRET, count=1)
    with pytest.raises(ValueError, match="count"):
        await load("http://127.0.0.1:1", payloads.SECRET, count=10**9)
