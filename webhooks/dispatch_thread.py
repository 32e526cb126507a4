"""The dispatcher on a thread of its own, with its own event loop, off the request path.

Creating a flow run costs the Prefect client milliseconds of CPU (building and validating
its models) per delivery; on the request loop, a burst of deliveries to dispatch would sit in
front of the next requests' answers. On its own loop, the request loop only hands it a
wake-up. A thread rather than a process: the store and its pooled connections are shared,
a wake-up is a call, and stopping it is a join; the thread still competes for the GIL, but
the interpreter hands the GIL over at every blocking call and at least every 5 ms, which the
receiver's latency figure (``make bench``) includes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading

from webhooks.dispatcher import Dispatcher

logger = logging.getLogger("gantry.webhooks.dispatcher")


class DispatcherThread:
    """Runs ``dispatcher.run()`` on a daemon thread until ``stop()``."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        # The thread runs in a copy of the starting context: Prefect settings made temporary
        # by the caller (its API URL) apply to the dispatcher too.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._main,), name="webhook-dispatcher", daemon=True
        )

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            # Set, not only started: wake() may come before the first pass begins.
            self._started.set()
            loop.run_until_complete(self.dispatcher.run())
        except Exception:
            logger.exception("the dispatcher stopped on an error; deliveries stay pending")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def _call(self, method: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(getattr(self.dispatcher, method))
        except RuntimeError:
            # The loop closed meanwhile (shutting down): nothing left to wake.
            return

    def wake(self) -> None:
        """A delivery was stored (called from the request loop)."""
        self._call("wake")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the dispatch in flight; the store and idempotency keys cover the rest."""
        self._call("stop")
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the dispatcher did not stop within %.0f s", timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()
