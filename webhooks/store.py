"""The durable delivery store: every accepted delivery is recorded before GitHub hears 202.

One row per ``X-GitHub-Delivery`` id; inserting an id that exists does nothing, so duplicate
deliveries arriving at once (even at several receiver replicas) collapse into one row.
SQLite in the state folder by default (WAL); PostgreSQL (psycopg 3) when the URL says so, for
several replicas behind a load balancer. Calls are blocking and short: async callers run them
in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from webhooks.events import PipelineRequest

Status = Literal["pending", "dispatched", "ignored", "failed"]
DONE: frozenset[Status] = frozenset({"dispatched", "ignored", "failed"})
MAX_ERROR = 2000
COLUMNS = (
    "id, event, action, received_at, payload, request, status, attempts, flow_run_id, last_error"
)


class StoreError(RuntimeError):
    """The delivery store cannot be opened, read or written."""


class Delivery(BaseModel):
    """One recorded delivery and what became of it."""

    model_config = ConfigDict(frozen=True)

    id: str
    event: str
    action: str | None = None
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    payload: str = Field(repr=False, description="the raw JSON body, as received")
    request: PipelineRequest | None = None
    status: Status = "pending"
    attempts: int = 0
    flow_run_id: str | None = None
    last_error: str | None = None

    def payload_json(self) -> Any:
        return json.loads(self.payload)


def _row_to_delivery(row: Sequence[Any]) -> Delivery:
    received = row[3]
    if isinstance(received, str):
        received = datetime.fromisoformat(received)
    return Delivery(
        id=row[0],
        event=row[1],
        action=row[2],
        received_at=received,
        payload=row[4],
        request=PipelineRequest.model_validate_json(row[5]) if row[5] else None,
        status=row[6],
        attempts=row[7],
        flow_run_id=row[8],
        last_error=row[9],
    )


def _insert_values(delivery: Delivery) -> tuple[Any, ...]:
    request = delivery.request.model_dump_json() if delivery.request else None
    return (
        delivery.id,
        delivery.event,
        delivery.action,
        delivery.received_at,
        delivery.payload,
        request,
        delivery.status,
        delivery.attempts,
        delivery.flow_run_id,
        delivery.last_error,
    )


class DeliveryStore(ABC):
    """What the receiver and dispatcher need from a store."""

    @abstractmethod
    def add(self, delivery: Delivery) -> bool:
        """Record ``delivery``; False when its id was already recorded (a duplicate)."""

    @abstractmethod
    def get(self, delivery_id: str) -> Delivery | None: ...

    @abstractmethod
    def pending(self, limit: int = 100) -> list[Delivery]:
        """Deliveries still to dispatch, oldest first."""

    @abstractmethod
    def count_pending(self) -> int: ...

    @abstractmethod
    def mark_dispatched(self, delivery_id: str, flow_run_id: str) -> None: ...

    @abstractmethod
    def record_attempt(self, delivery_id: str, error: str) -> None:
        """A failed try: the delivery stays pending and is tried again later."""

    @abstractmethod
    def mark_failed(self, delivery_id: str, reason: str) -> None:
        """Give up on a delivery that can never be dispatched (the reason is kept)."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise StoreError unless a write would succeed now (for /readyz)."""

    def is_done(self, delivery_id: str) -> bool:
        """Recorded and finished with: dispatched, ignored, or failed for good."""
        found = self.get(delivery_id)
        return found is not None and found.status in DONE

    def is_recorded(self, delivery_id: str) -> bool:
        """Recorded at all (what reconciliation with GitHub's delivery log asks)."""
        return self.get(delivery_id) is not None

    def close(self) -> None:  # noqa: B027 - optional hook; stores holding no resources skip it
        """Release what the store holds."""


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    action TEXT,
    received_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    request TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    flow_run_id TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (status, received_at);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at TEXT NOT NULL);
"""


class SqliteStore(DeliveryStore):
    """One SQLite file; a connection per call, so any thread (or process) may use it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of the delivery store {path}") from exc
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SQLITE_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # mode=rw: a vanished file is an error, not a fresh empty store.
        exists = self.path.exists()
        uri = f"file:{self.path}?mode={'rw' if exists else 'rwc'}"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=15, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the delivery store {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA busy_timeout=15000")
            yield db
        except sqlite3.Error as exc:
            raise StoreError(f"delivery store {self.path}: {exc}") from exc
        finally:
            db.close()

    def add(self, delivery: Delivery) -> bool:
        values = list(_insert_values(delivery))
        values[3] = delivery.received_at.isoformat()
        with self._db() as db:
            cursor = db.execute(
                f"INSERT OR IGNORE INTO deliveries ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",  # noqa: S608 - fixed column list
                values,
            )
            return cursor.rowcount == 1

    def get(self, delivery_id: str) -> Delivery | None:
        with self._db() as db:
            row = db.execute(
                f"SELECT {COLUMNS} FROM deliveries WHERE id = ?",  # noqa: S608 - fixed column list
                (delivery_id,),
            ).fetchone()
        return _row_to_delivery(row) if row else None

    def pending(self, limit: int = 100) -> list[Delivery]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM deliveries WHERE status = 'pending' "  # noqa: S608 - fixed column list
                "ORDER BY received_at, id LIMIT ?",
                (limit,),
            ).fetchall()
        return [_row_to_delivery(r) for r in rows]

    def count_pending(self) -> int:
        with self._db() as db:
            row = db.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()
        return int(row[0])

    def mark_dispatched(self, delivery_id: str, flow_run_id: str) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE deliveries SET status = 'dispatched', flow_run_id = ?, "
                "attempts = attempts + 1, last_error = NULL WHERE id = ?",
                (flow_run_id, delivery_id),
            )

    def record_attempt(self, delivery_id: str, error: str) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (error[:MAX_ERROR], delivery_id),
            )

    def mark_failed(self, delivery_id: str, reason: str) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE deliveries SET status = 'failed', last_error = ? WHERE id = ?",
                (reason[:MAX_ERROR], delivery_id),
            )

    def check_writable(self) -> None:
        if not self.path.exists():
            raise StoreError(f"the delivery store {self.path} is missing")
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)",
                (datetime.now(UTC).isoformat(),),
            )


POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS gantry_webhook_deliveries (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    action TEXT,
    received_at TIMESTAMPTZ NOT NULL,
    payload TEXT NOT NULL,
    request TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    flow_run_id TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS gantry_webhook_deliveries_pending
    ON gantry_webhook_deliveries (status, received_at);
CREATE TABLE IF NOT EXISTS gantry_webhook_probe (id INTEGER PRIMARY KEY, at TIMESTAMPTZ NOT NULL);
"""
PG_TABLE = "gantry_webhook_deliveries"


class PostgresStore(DeliveryStore):
    """A PostgreSQL table shared by several receivers; a short connection per call."""

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError("a postgresql:// store needs the psycopg package") from exc
        self._psycopg = psycopg
        self._url = url
        self._timeout = connect_timeout
        with self._db() as db:
            # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
            db.execute("SELECT pg_advisory_xact_lock(727372)")
            db.execute(POSTGRES_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[Any]:
        psycopg = self._psycopg
        try:
            with (
                psycopg.connect(self._url, connect_timeout=max(1, int(self._timeout))) as db,
                db.transaction(),
            ):
                yield db
        except psycopg.Error as exc:
            # The message may quote the URL's host but never its password (libpq omits it).
            raise StoreError(f"the PostgreSQL delivery store: {type(exc).__name__}") from exc

    def add(self, delivery: Delivery) -> bool:
        with self._db() as db:
            cursor = db.execute(
                f"INSERT INTO {PG_TABLE} ({COLUMNS}) VALUES "  # noqa: S608 - fixed names
                "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO NOTHING",
                _insert_values(delivery),
            )
            return bool(cursor.rowcount == 1)

    def get(self, delivery_id: str) -> Delivery | None:
        with self._db() as db:
            row = db.execute(
                f"SELECT {COLUMNS} FROM {PG_TABLE} WHERE id = %s",  # noqa: S608 - fixed names
                (delivery_id,),
            ).fetchone()
        return _row_to_delivery(row) if row else None

    def pending(self, limit: int = 100) -> list[Delivery]:
        with self._db() as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM {PG_TABLE} WHERE status = 'pending' "  # noqa: S608 - fixed names
                "ORDER BY received_at, id LIMIT %s",
                (limit,),
            ).fetchall()
        return [_row_to_delivery(r) for r in rows]

    def count_pending(self) -> int:
        with self._db() as db:
            row = db.execute(
                f"SELECT COUNT(*) FROM {PG_TABLE} WHERE status = 'pending'"  # noqa: S608 - fixed names
            ).fetchone()
        return int(row[0])

    def mark_dispatched(self, delivery_id: str, flow_run_id: str) -> None:
        with self._db() as db:
            db.execute(
                f"UPDATE {PG_TABLE} SET status = 'dispatched', flow_run_id = %s, "  # noqa: S608 - fixed names
                "attempts = attempts + 1, last_error = NULL WHERE id = %s",
                (flow_run_id, delivery_id),
            )

    def record_attempt(self, delivery_id: str, error: str) -> None:
        with self._db() as db:
            db.execute(
                f"UPDATE {PG_TABLE} SET attempts = attempts + 1, last_error = %s "  # noqa: S608 - fixed names
                "WHERE id = %s",
                (error[:MAX_ERROR], delivery_id),
            )

    def mark_failed(self, delivery_id: str, reason: str) -> None:
        with self._db() as db:
            db.execute(
                f"UPDATE {PG_TABLE} SET status = 'failed', last_error = %s "  # noqa: S608 - fixed names
                "WHERE id = %s",
                (reason[:MAX_ERROR], delivery_id),
            )

    def check_writable(self) -> None:
        with self._db() as db:
            db.execute(
                "INSERT INTO gantry_webhook_probe (id, at) VALUES (1, now()) "
                "ON CONFLICT (id) DO UPDATE SET at = excluded.at"
            )


def open_store(url: str) -> DeliveryStore:
    """The store a URL names: ``postgresql://...``, ``sqlite:///path`` or a plain file path."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        # sqlite:////abs/file or sqlite:///relative/file, as SQLAlchemy spells them.
        return SqliteStore(Path(url.removeprefix("sqlite:///")).resolve())
    if "://" in url:
        raise StoreError("GANTRY_WEBHOOK_STORE must be a file path, sqlite:/// or postgresql://")
    return SqliteStore(Path(url).resolve())
