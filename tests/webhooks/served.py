"""The receiver served for real by uvicorn, in a thread with its own event loop."""

from __future__ import annotations

import contextvars
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from tests.webhooks import payloads
from webhooks.app import create_app
from webhooks.server import server_config
from webhooks.settings import ReceiverSettings
from webhooks.store import DeliveryStore


class ServedReceiver:
    """``with ServedReceiver(settings) as served:`` then talk to ``served.url``."""

    def __init__(
        self, settings: ReceiverSettings, store: DeliveryStore | None = None, **options: Any
    ) -> None:
        self.app = create_app(settings, store, **options)
        # The production server's settings (uvloop, httptools, deadlines, connection limit).
        self.server = uvicorn.Server(server_config(settings, self.app))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        # The thread runs in a copy of this context: Prefect settings made temporary by a
        # fixture (its API URL) apply to the served app too.
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run,
            args=(self.server.run,),
            kwargs={"sockets": [self.sock]},
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> DeliveryStore:
        store: DeliveryStore = self.app.state.store
        return store

    def __enter__(self) -> ServedReceiver:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the receiver did not start")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


def receiver_settings(home: Path) -> ReceiverSettings:
    """Settings for a receiver under test: a slow poll (deliveries are woken), short backoff."""
    return ReceiverSettings(
        webhook_secret=payloads.SECRET,
        webhook_repositories=payloads.SERVED,
        home=home,
        webhook_poll_seconds=30,
        webhook_backoff_initial=0.2,
        webhook_backoff_cap=1.0,
    )
