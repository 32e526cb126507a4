"""The receiver served for real by uvicorn, in a thread with its own event loop, and the real
deployments of prefect.yaml it dispatches to."""

from __future__ import annotations

import contextvars
import functools
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import uvicorn
from prefect.client.schemas.responses import DeploymentResponse
from prefect.flows import Flow, load_flow_from_entrypoint

from deployments.prefect_server import PrefectServer
from deployments.stack import PROJECT_DIR, Stack
from tests.plugins.prefect_server import prefect_api
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


# The Prefect servers of this session that prefect.yaml was applied to: `prefect deploy` takes
# seconds, and every module that dispatches shares what it registered.
_APPLIED: set[str] = set()


def real_deployments(server: PrefectServer) -> PrefectServer:
    """prefect.yaml's pr, merge and release deployments on ``server``, applied as `gantry up`
    applies them (the work pool, then `prefect deploy --all`): the real flows' entrypoints and
    parameter schemas, which Prefect enforces when a run is created. No worker: a dispatch
    makes a Scheduled run, and nothing executes it."""
    url = server.settings.prefect_api_url
    if url not in _APPLIED:
        stack = Stack(server.settings)
        stack.ensure_work_pool()
        stack.apply_deployments()
        _APPLIED.add(url)
    return server


@functools.cache
def _flow_at(entrypoint: str) -> Flow[..., Any]:
    return load_flow_from_entrypoint(str(PROJECT_DIR / entrypoint))


def bound_by_the_real_flow(
    deployment: DeploymentResponse, parameters: dict[str, Any]
) -> dict[str, Any]:
    """``parameters`` bound to the flow the deployment's entrypoint names, as the worker's
    engine binds them when the run starts; SignatureMismatchError for a name the flow does not
    take. Prefect's server checks types and required parameters at run creation, but its
    parameter schema lets other names through: only this finds a parameter the flow lost."""
    assert deployment.entrypoint is not None
    bound: dict[str, Any] = _flow_at(deployment.entrypoint).validate_parameters(parameters)
    return bound


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """The session server with prefect.yaml's real deployments (a plugin: tests/conftest.py).
    Module-scoped, so set up before a test's own Prefect settings: it names the server."""
    with prefect_api(prefect_server.settings):
        return real_deployments(prefect_server)
