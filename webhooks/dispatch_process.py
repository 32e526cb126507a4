"""The dispatcher as a process of its own: ``python -m webhooks.dispatch_process``.

Creating a flow run costs the Prefect client milliseconds of CPU per delivery. On a thread of
the receiver it holds the receiver's GIL, and at a few hundred deliveries a second the
answers to GitHub wait behind it. In its own process it shares nothing with the request loop
but the store, and it runs at a lower CPU priority (``os.nice``), so that on a busy machine
the receiver, whose answers GitHub times, gets the CPU first.

The receiver does not signal it: the dispatcher polls the store on a short interval
(``GANTRY_WEBHOOK_DISPATCH_POLL_SECONDS``, 0.1 s by default), a cheap indexed query when
nothing is pending, which adds half that interval on average between a delivery's answer
and its flow run. Several of these processes on one PostgreSQL store may pick the same
pending delivery; its id is the flow run's idempotency key, so Prefect still makes one run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from clients.retry import RetryPolicy
from core.logconfig import configure_json_logging
from webhooks.dispatcher import Dispatcher
from webhooks.settings import DispatchSettings, SettingsError, load_dispatch_settings
from webhooks.store import StoreError, open_store

logger = logging.getLogger("gantry.webhooks.dispatcher")


def lower_priority(increment: int) -> None:
    # Below the receiver's priority (0): the dispatcher's work may wait, a delivery's answer not.
    if increment == 0:
        return
    try:
        os.nice(increment)
    except OSError as exc:
        # Not fatal: the dispatcher still works, only without yielding the CPU first.
        logger.warning("could not lower the dispatcher's CPU priority: %s", exc)


async def run(settings: DispatchSettings) -> None:
    """Dispatch pending deliveries until SIGTERM or SIGINT; the dispatch in flight finishes."""
    store = open_store(settings.store_url)
    dispatcher = Dispatcher(
        store,
        poll_seconds=settings.webhook_dispatch_poll_seconds,
        backoff=RetryPolicy(
            backoff=settings.webhook_backoff_initial, backoff_cap=settings.webhook_backoff_cap
        ),
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, dispatcher.stop)
    logger.info(
        "dispatcher started, polling the store every %.2f s",
        settings.webhook_dispatch_poll_seconds,
    )
    try:
        await dispatcher.run()
    finally:
        store.close()
        logger.info("dispatcher stopped")


def main() -> int:
    configure_json_logging()
    try:
        settings = load_dispatch_settings()
    except SettingsError as exc:
        logger.error("%s", exc)
        return 2
    lower_priority(settings.webhook_dispatch_niceness)
    try:
        asyncio.run(run(settings))
    except StoreError as exc:
        logger.error("the delivery store cannot be opened: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
