"""uvicorn's httptools protocol with a deadline on a request's headers.

uvicorn bounds the idle time between requests on a kept-alive connection
(``timeout_keep_alive``), but nothing bounds how long a client may take to send a request's
headers: one that trickles them a byte at a time holds its connection, and a slot of the
connection limit, for as long as it likes. Here the connection is closed when a request's
headers are not complete within the deadline, counted from the connection's start or from
the request's first byte. The body has its own deadline, in the app (``read_capped``).

uvicorn documents ``Config(http=...)`` as taking a protocol class; the subclass overrides
the parser callbacks of uvicorn's own class (``uvicorn.protocols.http.httptools_impl``),
which uvicorn offers no other hook for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("gantry.webhooks.server")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """Closes a connection whose request headers take longer than ``header_timeout``."""

    header_timeout: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        # Only between requests: a request being answered is the app's to finish.
        if self.cycle is None or self.cycle.response_complete:
            logger.warning(
                "closed a connection whose request headers took over %.0f s", self.header_timeout
            )
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to hand to ``uvicorn.Config(http=...)`` for this deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": timeout})
