"""What the delivery store records and the interface the receiver and dispatcher use.

Kept apart from the SQL so that the interface reads on its own and a test double (or another
backend) needs nothing from SQLAlchemy.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from webhooks.events import PipelineRequest

Status = Literal["pending", "dispatched", "ignored", "failed"]
DONE: frozenset[Status] = frozenset({"dispatched", "ignored", "failed"})
# Errors come from exceptions of other systems: a bound keeps one odd message from bloating rows.
MAX_ERROR = 2000


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


class DeliveryStore(ABC):
    """What the receiver and dispatcher need from a store."""

    @abstractmethod
    def add(self, delivery: Delivery) -> bool:
        """Record ``delivery``; False when its id was already recorded (a duplicate)."""

    def add_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Record several deliveries, ``add``'s answer for each in order.

        A store that can should write them in one transaction (one commit, all or none): the
        SQL stores do. This default writes them one by one.
        """
        return [self.add(delivery) for delivery in deliveries]

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
