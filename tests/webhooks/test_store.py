"""The delivery store: one row per delivery id under concurrency, durable across reopen, pooled
connections, databases left by the first (hand-written SQL) store, on SQLite and on a
throwaway PostgreSQL server."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event

from tests.webhooks import payloads
from webhooks.events import PipelineRequest, map_event
from webhooks.store import (
    Delivery,
    DeliveryStore,
    PostgresStore,
    SqliteStore,
    SqlStore,
    StoreError,
    open_store,
)

pytestmark = pytest.mark.timeout(120)
# The PostgreSQL cases start a real server: "slow" as the marker means it.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        opened: SqlStore = SqliteStore(tmp_path / "deliveries.db")
        yield opened
        opened.close()
        return
    url = request.getfixturevalue("postgres_url")
    opened = PostgresStore(url)
    yield opened
    opened.close()
    # Each test starts from an empty table on the shared server.
    with psycopg.connect(url) as db:
        db.execute("TRUNCATE gantry_webhook_deliveries")


def delivery(delivery_id: str | None = None, minutes_ago: int = 0) -> Delivery:
    delivery_id = delivery_id or payloads.new_delivery_id()
    body = payloads.pull_request()
    request = map_event("pull_request", delivery_id, body, repositories=payloads.ALLOWLIST)
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


def test_an_unreachable_postgresql_store_is_a_store_error_naming_no_password() -> None:
    from core.ports import free_port

    with pytest.raises(StoreError, match="PostgreSQL") as raised:
        open_store(f"postgresql://gantry:hunter2-not-logged@127.0.0.1:{free_port()}/postgres")
    chain = [raised.value, raised.value.__cause__, getattr(raised.value.__cause__, "orig", None)]
    assert all("hunter2" not in str(exc) for exc in chain)


def test_an_unparseable_postgresql_url_is_a_store_error_naming_no_password() -> None:
    with pytest.raises(StoreError, match="GANTRY_WEBHOOK_STORE") as raised:
        open_store("postgresql://gantry:hunter2-not-logged@[::1/postgres")
    assert "hunter2" not in str(raised.value) and raised.value.__cause__ is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_reuse_pooled_connections(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        store: SqlStore = SqliteStore(tmp_path / "webhooks.db")
    else:
        store = PostgresStore(request.getfixturevalue("postgres_url"))
    opened: list[object] = []
    event.listen(store.engine, "connect", lambda connection, record: opened.append(connection))
    try:
        for _ in range(20):
            item = delivery()
            store.add(item)
            store.get(item.id)
            store.record_attempt(item.id, "ConnectError")
            store.count_pending()
        assert len(opened) <= 1, "each request opened its own database connection"
    finally:
        store.close()
        if backend == "postgresql":
            with psycopg.connect(request.getfixturevalue("postgres_url")) as db:
                db.execute("TRUNCATE gantry_webhook_deliveries")


def test_sqlite_store_runs_in_wal_mode_with_a_busy_timeout_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "webhooks.db")
    with store.engine.connect() as connection:
        pragmas = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()
            for name in ("journal_mode", "busy_timeout", "synchronous")
        }
    store.close()
    assert pragmas == {"journal_mode": "wal", "busy_timeout": 15000, "synchronous": 2}


def test_a_replaced_store_file_is_not_written_through_old_connections(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.db"
    store = SqliteStore(path)
    before = delivery()
    store.add(before)
    path.unlink()
    # Someone restores (or recreates) the file: the pool must write to the new one.
    SqliteStore(path).close()
    after = delivery()
    assert store.add(after)
    store.close()
    assert [d.id for d in SqliteStore(path).pending()] == [after.id]


# The schema and row layout the first, hand-written stores used, verbatim.
OLD_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY, event TEXT NOT NULL, action TEXT, received_at TEXT NOT NULL,
    payload TEXT NOT NULL, request TEXT, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, flow_run_id TEXT, last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (status, received_at);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
"""
OLD_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS gantry_webhook_deliveries (
    id TEXT PRIMARY KEY, event TEXT NOT NULL, action TEXT, received_at TIMESTAMPTZ NOT NULL,
    payload TEXT NOT NULL, request TEXT, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, flow_run_id TEXT, last_error TEXT
);
CREATE INDEX IF NOT EXISTS gantry_webhook_deliveries_pending
    ON gantry_webhook_deliveries (status, received_at);
CREATE TABLE IF NOT EXISTS gantry_webhook_probe (id INTEGER PRIMARY KEY, at TIMESTAMPTZ NOT NULL);
"""


def old_row(item: Delivery, received_at: object) -> tuple[object, ...]:
    request = item.request.model_dump_json() if item.request else None
    return (item.id, item.event, item.action, received_at, item.payload, request, "pending", 0)


OLD_INSERT = (
    "INSERT INTO {table} (id, event, action, received_at, payload, request, status, attempts) "
    "VALUES ({marks})"
)


def assert_old_and_new_rows_mix(store: DeliveryStore, old: Delivery) -> None:
    got = store.get(old.id)
    assert got is not None and got.request == old.request
    assert abs((got.received_at - old.received_at).total_seconds()) < 1
    older, newer = delivery(minutes_ago=10), delivery(minutes_ago=0)
    assert store.add(newer) and store.add(older) and not store.add(old)
    assert [d.id for d in store.pending()] == [older.id, old.id, newer.id]
    store.check_writable()


def test_a_sqlite_file_made_by_the_first_store_opens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.db"
    old = delivery(minutes_ago=5)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SQLITE_SCHEMA)
        insert = OLD_INSERT.format(table="deliveries", marks=",".join("?" * 8))
        db.execute(insert, old_row(old, old.received_at.isoformat()))
    db.close()
    store = SqliteStore(path)
    assert_old_and_new_rows_mix(store, old)
    store.close()


@pytest.mark.slow
def test_a_postgresql_table_made_by_the_first_store_opens_unchanged(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE first_store")
    url = postgres_url.rsplit("/", 1)[0] + "/first_store"
    old = delivery(minutes_ago=5)
    with psycopg.connect(url) as db:
        db.execute(OLD_POSTGRES_SCHEMA)
        insert = OLD_INSERT.format(table="gantry_webhook_deliveries", marks=",".join(["%s"] * 8))
        db.execute(insert, old_row(old, old.received_at))
    store = open_store(url)
    assert_old_and_new_rows_mix(store, old)
    store.close()


@pytest.mark.slow
def test_a_postgresql_store_outlives_its_pooled_connections_being_cut(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    first, second = delivery(), delivery()
    try:
        assert store.add(first)
        # A server restart or failover drops every session; the pool must notice, not fail.
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database()"
            )
        assert store.add(second)
        assert {d.id for d in store.pending()} == {first.id, second.id}
    finally:
        store.close()
        with psycopg.connect(postgres_url) as db:
            db.execute("TRUNCATE gantry_webhook_deliveries")
