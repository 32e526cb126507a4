"""The delivery store's tables, defined once for SQLite and PostgreSQL.

The names are those the first stores created, so databases they left behind open unchanged:
a SQLite file is the store's alone (``deliveries``, ``probe``), while a PostgreSQL database may
be shared, hence the ``gantry_webhook_`` prefix there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Index, Integer, MetaData, Table, Text, text
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator, TypeEngine

SQLITE_PREFIX = ""
POSTGRES_PREFIX = "gantry_webhook_"


def _utc(value: datetime) -> datetime:
    # A naive time can only have come from our own code, which works in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware time, read back in UTC: TIMESTAMPTZ on PostgreSQL, ISO 8601 text on SQLite.

    SQLAlchemy's own SQLite DateTime drops the offset and writes another text layout than the
    first store did; fixed-width UTC ISO text keeps old and new rows comparable, so ordering by
    the column (pending deliveries, oldest first) stays ordering by time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return _utc(value).isoformat(timespec="microseconds")
        return _utc(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return _utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


class StoreTables:
    """The deliveries table, its pending index and the readiness probe's one-row table."""

    def __init__(self, prefix: str) -> None:
        self.metadata = MetaData()
        self.deliveries = Table(
            f"{prefix}deliveries",
            self.metadata,
            Column("id", Text, primary_key=True),
            Column("event", Text, nullable=False),
            Column("action", Text),
            Column("received_at", UtcDateTime(), nullable=False),
            Column("payload", Text, nullable=False),
            Column("request", Text),
            Column("status", Text, nullable=False),
            Column("attempts", Integer, nullable=False, server_default=text("0")),
            Column("flow_run_id", Text),
            Column("last_error", Text),
        )
        # The dispatcher's question, "what is pending, oldest first", reads only this index.
        Index(
            f"{prefix}deliveries_pending",
            self.deliveries.c.status,
            self.deliveries.c.received_at,
        )
        # The readiness check writes here rather than into deliveries, so it never adds a row.
        self.probe = Table(
            f"{prefix}probe",
            self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("at", UtcDateTime(), nullable=False),
        )

    def create(self, connection: Connection) -> None:
        """Create what is missing. IF NOT EXISTS rather than SQLAlchemy's check-then-create:
        receivers starting together on one database must not fail on each other's tables."""
        for table in self.metadata.sorted_tables:
            connection.execute(CreateTable(table, if_not_exists=True))
            for index in sorted(table.indexes, key=lambda index: str(index.name)):
                connection.execute(CreateIndex(index, if_not_exists=True))
