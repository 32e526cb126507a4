"""Prefect's event stream, read for the warm worker: a flow run scheduled in its work pool wakes
it (no waiting for the next poll), a flow run set to Cancelling is handed to it to kill.

Uses Prefect's public subscriber (``prefect.events.clients.get_events_subscriber``); the
worker's ordinary polling stays on as the fallback while the stream is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.events.schemas.events import Event

SCHEDULED = "prefect.flow-run.Scheduled"
CANCELLING = "prefect.flow-run.Cancelling"
FLOW_RUN_PREFIX = "prefect.flow-run."
RECONNECT_SECONDS = 5.0


def flow_run_id(event: Event) -> UUID | None:
    resource_id = event.resource.id
    if not resource_id.startswith(FLOW_RUN_PREFIX):
        return None
    try:
        return UUID(resource_id.removeprefix(FLOW_RUN_PREFIX))
    except ValueError:
        return None


def in_work_pool(event: Event, pool: str) -> bool:
    """Whether the event's flow run belongs to the work pool named ``pool``."""
    return any(
        related.role == "work-pool" and related.get("prefect.resource.name") == pool
        for related in event.related
    )


async def follow(
    pool: str,
    on_scheduled: Callable[[], None],
    on_cancelling: Callable[[UUID], Awaitable[None]],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Until cancelled: wake on Scheduled runs of ``pool``, report Cancelling runs."""
    names = EventNameFilter(name=[SCHEDULED, CANCELLING])
    while True:
        try:
            subscriber = get_events_subscriber(
                filter=EventFilter(event=names), reconnect_on_clean_close=True
            )
            async with subscriber:
                logger.info("following Prefect's event stream for work pool %r", pool)
                async for event in subscriber:
                    run_id = flow_run_id(event)
                    if run_id is None:
                        continue
                    if event.event == SCHEDULED and in_work_pool(event, pool):
                        on_scheduled()
                    elif event.event == CANCELLING:
                        await on_cancelling(run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream is an accelerator: polling goes on without it
            logger.warning(
                "Prefect's event stream is unavailable (%s); polling only, retrying in %.0f s",
                type(exc).__name__,
                RECONNECT_SECONDS,
            )
        await asyncio.sleep(RECONNECT_SECONDS)
