"""The durable delivery store: every accepted delivery is recorded before GitHub hears 202.

One row per ``X-GitHub-Delivery`` id; inserting an id that exists does nothing, so duplicate
deliveries arriving at once (even at several receiver replicas) collapse into one row.
SQLite in the state folder by default (WAL); PostgreSQL (psycopg 3) when the URL says so, for
several replicas behind a load balancer; both through one SQLAlchemy Core layer
(``store_sql``). Calls are blocking and short: async callers run them in a worker thread.
"""

from __future__ import annotations

from pathlib import Path

from webhooks.settings import POSTGRES_SCHEMES
from webhooks.store_model import DONE, MAX_ERROR, Delivery, DeliveryStore, Status, StoreError
from webhooks.store_sql import PostgresStore, SqliteStore, SqlStore

__all__ = [
    "DONE",
    "MAX_ERROR",
    "POSTGRES_SCHEMES",
    "Delivery",
    "DeliveryStore",
    "PostgresStore",
    "SqlStore",
    "SqliteStore",
    "Status",
    "StoreError",
    "open_store",
]


def open_store(url: str) -> DeliveryStore:
    """The store a URL names: ``postgresql://...``, ``sqlite:///path`` or a plain file path."""
    if url.startswith(POSTGRES_SCHEMES):
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        # sqlite:////abs/file or sqlite:///relative/file, as SQLAlchemy spells them.
        return SqliteStore(Path(url.removeprefix("sqlite:///")).resolve())
    if "://" in url:
        raise StoreError("GANTRY_WEBHOOK_STORE must be a file path, sqlite:/// or postgresql://")
    return SqliteStore(Path(url).resolve())
