"""The delivery store: one row per delivery id under concurrency, durable across reopen, on
SQLite and on a throwaway PostgreSQL server."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.webhooks import payloads
from tests.webhooks.postgres import postgres_bin, throwaway_postgres
from webhooks.events import PipelineRequest, map_event
from webhooks.store import Delivery, DeliveryStore, SqliteStore, StoreError, open_store

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed on this machine")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeliveryStore]:
    if request.param == "sqlite":
        yield open_store(f"sqlite:///{tmp_path}/deliveries.db")
        return
    url = request.getfixturevalue("postgres_url")
    opened = open_store(url)
    yield opened
    # Each test starts from an empty table on the shared server.
    import psycopg

    with psycopg.connect(url) as db:
        db.execute("TRUNCATE gantry_webhook_deliveries")


def delivery(delivery_id: str | None = None, minutes_ago: int = 0) -> Delivery:
    delivery_id = delivery_id or payloads.new_delivery_id()
    body = payloads.pull_request()
    request = map_event("pull_request", delivery_id, body)
    assert isinstance(request, PipelineRequest)
    return Delivery(
        id=delivery_id,
        event="pull_request",
        action="opened",
        received_at=datetime.now(UTC) - timedelta(minutes=minutes_ago),
        payload=json.dumps(body),
        request=request,
    )


def test_a_new_delivery_is_recorded_once_and_read_back_whole(store: DeliveryStore) -> None:
    first = delivery()
    assert store.add(first) is True
    assert store.add(first) is False
    got = store.get(first.id)
    assert got is not None
    assert got.model_dump(exclude={"received_at"}) == first.model_dump(exclude={"received_at"})
    assert abs((got.received_at - first.received_at).total_seconds()) < 1
    assert got.payload_json()["number"] == 42
    assert store.is_recorded(first.id) and not store.is_done(first.id)
    assert store.get("unknown") is None and not store.is_recorded("unknown")


def test_pending_deliveries_come_oldest_first_and_leave_when_handled(store: DeliveryStore) -> None:
    old, new, gone = delivery(minutes_ago=5), delivery(minutes_ago=1), delivery(minutes_ago=3)
    for item in (new, old, gone):
        store.add(item)
    store.mark_failed(gone.id, "deployment rejected the parameters")
    assert [d.id for d in store.pending()] == [old.id, new.id]
    assert store.count_pending() == 2

    store.record_attempt(old.id, "ConnectError: connection refused")
    still = store.get(old.id)
    assert still is not None and still.status == "pending" and still.attempts == 1
    assert still.last_error == "ConnectError: connection refused"

    store.mark_dispatched(old.id, "3c5f1a5e-0000-4000-8000-000000000001")
    done = store.get(old.id)
    assert done is not None and done.status == "dispatched" and done.attempts == 2
    assert done.flow_run_id == "3c5f1a5e-0000-4000-8000-000000000001" and done.last_error is None
    assert store.is_done(old.id) and store.is_done(gone.id) and not store.is_done(new.id)
    assert [d.id for d in store.pending()] == [new.id]


def test_concurrent_writers_of_one_delivery_id_make_one_row(store: DeliveryStore) -> None:
    same = delivery()
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def add() -> None:
        barrier.wait()
        results.append(store.add(same))

    threads = [threading.Thread(target=add) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == [False] * 15 + [True]
    assert [d.id for d in store.pending()] == [same.id]


def test_store_is_writable_while_it_exists(store: DeliveryStore) -> None:
    store.check_writable()


def test_recorded_deliveries_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhooks.db"
    first = delivery()
    SqliteStore(path).add(first)
    assert [d.id for d in SqliteStore(path).pending()] == [first.id]


def test_a_vanished_state_folder_makes_the_store_unwritable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state" / "webhooks.db")
    shutil.rmtree(tmp_path / "state")
    with pytest.raises(StoreError, match="missing"):
        store.check_writable()
    with pytest.raises(StoreError):
        store.add(delivery())


def test_store_urls_select_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a.db")), SqliteStore)
    store = open_store(f"sqlite:///{tmp_path}/b.db")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "b.db"
    with pytest.raises(StoreError, match="GANTRY_WEBHOOK_STORE"):
        open_store("mysql://db/gantry")


def test_an_unreachable_postgresql_store_is_a_store_error() -> None:
    from core.ports import free_port

    with pytest.raises(StoreError, match="PostgreSQL"):
        open_store(f"postgresql://gantry@127.0.0.1:{free_port()}/postgres")
