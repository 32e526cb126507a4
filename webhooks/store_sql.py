"""The delivery store on SQLAlchemy Core: one set of statements for SQLite and PostgreSQL.

Each store holds one Engine, so requests reuse pooled connections rather than opening one
each. Every write is one transaction (``add_many``: several deliveries, one commit) and
returns only once committed: a delivery is durable before GitHub hears 202. Only the upsert
(``ON CONFLICT``) is spelled per dialect.
Database errors become ``StoreError`` here, with messages that carry neither the payload
(``hide_parameters``) nor a credential.
"""

from __future__ import annotations

import sqlite3
import weakref
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    Table,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, QueuePool

from webhooks.events import PipelineRequest
from webhooks.store_model import MAX_ERROR, Delivery, DeliveryStore, StoreError
from webhooks.store_schema import POSTGRES_PREFIX, SQLITE_PREFIX, StoreTables

# Seconds a writer waits for another writer's lock (other threads, other receiver processes).
SQLITE_BUSY_TIMEOUT = 15.0
# Any constant will do, as long as every replica uses the same one.
SCHEMA_LOCK_KEY = 727372


def _row(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event": delivery.event,
        "action": delivery.action,
        "received_at": delivery.received_at,
        "payload": delivery.payload,
        "request": delivery.request.model_dump_json() if delivery.request else None,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "flow_run_id": delivery.flow_run_id,
        "last_error": delivery.last_error,
    }


def _delivery(row: RowMapping) -> Delivery:
    request = row["request"]
    return Delivery(
        id=row["id"],
        event=row["event"],
        action=row["action"],
        received_at=row["received_at"],
        payload=row["payload"],
        request=PipelineRequest.model_validate_json(request) if request else None,
        status=row["status"],
        attempts=row["attempts"],
        flow_run_id=row["flow_run_id"],
        last_error=row["last_error"],
    )


class SqlStore(DeliveryStore):
    """The store's statements over one Engine; subclasses make the engine and name errors."""

    # Driver exceptions that may escape SQLAlchemy's wrapping (e.g. from a custom creator).
    driver_errors: tuple[type[Exception], ...] = ()

    def __init__(self, engine: Engine, tables: StoreTables) -> None:
        self.engine = engine
        self.tables = tables
        # A store dropped without close() (tests, short CLI calls) still closes its connections.
        self._finalizer = weakref.finalize(self, engine.dispose)
        try:
            with self._connect(write=True) as connection:
                self._prepare(connection)
                tables.create(connection)
        except StoreError:
            self.close()
            raise

    def _prepare(self, connection: Connection) -> None:
        """Run on the connection that creates the tables, before it does."""

    @abstractmethod
    def _describe(self, exc: Exception) -> str:
        """The StoreError message for ``exc``: what an operator needs, nothing secret."""

    @contextmanager
    def _connect(self, *, write: bool) -> Iterator[Connection]:
        errors: tuple[type[Exception], ...] = (SQLAlchemyError, *self.driver_errors)
        try:
            with self.engine.begin() if write else self.engine.connect() as connection:
                yield connection
        except errors as exc:
            raise StoreError(self._describe(exc)) from exc

    def _insert(self, table: Table) -> sqlite.Insert | postgresql.Insert:
        # INSERT ... ON CONFLICT is the one statement each dialect spells its own way.
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _add(self, connection: Connection, delivery: Delivery) -> bool:
        deliveries = self.tables.deliveries
        statement = (
            self._insert(deliveries)
            .values(_row(delivery))
            .on_conflict_do_nothing(index_elements=[deliveries.c.id])
            # SQLAlchemy keeps the row count of UPDATE and DELETE only unless asked: here it
            # is the answer (1 inserted, 0 a duplicate).
            .execution_options(preserve_rowcount=True)
        )
        return connection.execute(statement).rowcount == 1

    def add(self, delivery: Delivery) -> bool:
        with self._connect(write=True) as connection:
            return self._add(connection, delivery)

    def add_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        # One transaction, so one commit (one fsync) for the lot: the group commit's write.
        # Row by row inside it, so that each delivery gets its own answer, a copy of one
        # earlier in the same batch included (a duplicate).
        with self._connect(write=True) as connection:
            return [self._add(connection, delivery) for delivery in deliveries]

    def get(self, delivery_id: str) -> Delivery | None:
        deliveries = self.tables.deliveries
        statement = select(deliveries).where(deliveries.c.id == delivery_id)
        with self._connect(write=False) as connection:
            row = connection.execute(statement).mappings().first()
        return _delivery(row) if row else None

    def pending(self, limit: int = 100) -> list[Delivery]:
        deliveries = self.tables.deliveries
        statement = (
            select(deliveries)
            .where(deliveries.c.status == "pending")
            .order_by(deliveries.c.received_at, deliveries.c.id)
            .limit(limit)
        )
        with self._connect(write=False) as connection:
            rows = connection.execute(statement).mappings().all()
        return [_delivery(row) for row in rows]

    def count_pending(self) -> int:
        deliveries = self.tables.deliveries
        statement = (
            select(func.count()).select_from(deliveries).where(deliveries.c.status == "pending")
        )
        with self._connect(write=False) as connection:
            return int(connection.execute(statement).scalar_one())

    def _update(self, delivery_id: str, **values: Any) -> None:
        deliveries = self.tables.deliveries
        statement = update(deliveries).where(deliveries.c.id == delivery_id).values(**values)
        with self._connect(write=True) as connection:
            connection.execute(statement)

    def mark_dispatched(self, delivery_id: str, flow_run_id: str) -> None:
        attempts = self.tables.deliveries.c.attempts
        self._update(
            delivery_id,
            status="dispatched",
            flow_run_id=flow_run_id,
            attempts=attempts + 1,
            last_error=None,
        )

    def record_attempt(self, delivery_id: str, error: str) -> None:
        attempts = self.tables.deliveries.c.attempts
        self._update(delivery_id, attempts=attempts + 1, last_error=error[:MAX_ERROR])

    def mark_failed(self, delivery_id: str, reason: str) -> None:
        self._update(delivery_id, status="failed", last_error=reason[:MAX_ERROR])

    def check_writable(self) -> None:
        probe = self.tables.probe
        statement = self._insert(probe).values(id=1, at=datetime.now(UTC))
        statement = statement.on_conflict_do_update(
            index_elements=[probe.c.id], set_={"at": statement.excluded.at}
        )
        with self._connect(write=True) as connection:
            connection.execute(statement)

    def close(self) -> None:
        self._finalizer()


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


def _watch_file(engine: Engine, path: Path) -> None:
    """Retire pooled connections whose file was removed or replaced.

    A pooled connection keeps its file open: after ``rm`` it would go on committing into an
    unlinked file, acknowledging deliveries that nothing can ever read. Checked at each
    checkout (one stat), the pool reconnects instead, which fails while the file is missing.
    """

    @event.listens_for(engine, "connect")
    def remember(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["file"] = _file_identity(path)

    @event.listens_for(engine, "checkout")
    def same_file(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        now = _file_identity(path)
        if now is None or now != record.info.get("file"):
            raise DisconnectionError("the delivery store file was removed or replaced")


class SqliteStore(SqlStore):
    """One SQLite file in WAL mode, shared by a receiver's threads and by other processes."""

    driver_errors = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Created once, here: connections open it read-write only (mode=rw), so a file
            # deleted later is an error, not a fresh empty store.
            path.touch(exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the delivery store {path}") from exc
        uri = f"{path.absolute().as_uri()}?mode=rw"

        def open_file() -> sqlite3.Connection:
            # timeout= is SQLite's busy timeout; check_same_thread: the pool hands a
            # connection to one thread at a time, but not always the same thread.
            connection = sqlite3.connect(
                uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False
            )
            # The WAL default (NORMAL) may lose the last commits on power loss; a delivery is
            # acknowledged to GitHub as soon as its commit returns.
            connection.execute("PRAGMA synchronous=FULL")
            return connection

        # QueuePool named explicitly: with a creator the URL names no file, and SQLAlchemy
        # would otherwise pick the single-connection pool meant for in-memory databases.
        engine = create_engine(
            "sqlite+pysqlite://", creator=open_file, poolclass=QueuePool, hide_parameters=True
        )
        _watch_file(engine, path)
        super().__init__(engine, StoreTables(SQLITE_PREFIX))

    def _prepare(self, connection: Connection) -> None:
        # WAL lets readers (the dispatcher, the CLI) run while a delivery is being written;
        # the mode is kept in the file, so setting it once per store is enough.
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")

    def _describe(self, exc: Exception) -> str:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        return f"delivery store {self.path}: {cause}"

    def check_writable(self) -> None:
        if not self.path.exists():
            raise StoreError(f"the delivery store {self.path} is missing")
        super().check_writable()


class PostgresStore(SqlStore):
    """A PostgreSQL table shared by several receivers, through psycopg 3 and a pool."""

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError("a postgresql:// store needs the psycopg package") from exc
        self.driver_errors = (psycopg.Error,)
        try:
            parsed = make_url(url).set(drivername="postgresql+psycopg")
        except (ArgumentError, ValueError):
            # SQLAlchemy's messages may quote the whole URL, password included: not chained.
            raise StoreError("GANTRY_WEBHOOK_STORE is not a valid postgresql:// URL") from None
        engine = create_engine(
            parsed,
            # A pooled connection may have been cut (server restart, failover, idle timeout):
            # a ping at checkout replaces it rather than failing the delivery it was to record.
            pool_pre_ping=True,
            connect_args={"connect_timeout": max(1, int(connect_timeout))},
            hide_parameters=True,
        )
        super().__init__(engine, StoreTables(POSTGRES_PREFIX))

    def _prepare(self, connection: Connection) -> None:
        # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS (it can fail
        # on the catalog's unique index); the lock ends with the transaction.
        connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))

    def _describe(self, exc: Exception) -> str:
        # Only the exception type leaves: libpq's text may name hosts and SQLAlchemy's the
        # statement, neither of which an answer or a log line needs.
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        return f"the PostgreSQL delivery store: {type(cause).__name__}"
