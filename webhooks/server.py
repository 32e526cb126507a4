"""Serving the receiver: uvicorn on the configured (loopback by default) address, JSON logs."""

from __future__ import annotations

import uvicorn
from starlette.types import ASGIApp

from core.logconfig import configure_json_logging
from core.ports import StackError, port_is_free
from core.redact import register_secrets
from webhooks.app import create_app
from webhooks.http_protocol import header_deadline_protocol
from webhooks.settings import ReceiverSettings, load_settings


def server_config(settings: ReceiverSettings, app: ASGIApp) -> uvicorn.Config:
    """uvicorn's settings for the receiver: uvloop, httptools with a header deadline, bounded
    connections, and a graceful drain on SIGTERM."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.webhook_port,
        # uvloop and httptools: the event loop and the HTTP parser in C, a few hundred
        # microseconds less per request than asyncio's loop and h11.
        loop="uvloop",
        http=header_deadline_protocol(settings.webhook_header_timeout),
        # Our JSON logging, not uvicorn's formatters; no access log (it would log every probe).
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        # GitHub waits 10 s for an answer; a stuck client must not hold a worker slot longer.
        timeout_keep_alive=5,
        # Past this many open connections a request is answered 503 at once: slow or idle
        # clients cannot make the process hold an unbounded number of sockets and buffers.
        limit_concurrency=settings.webhook_max_connections,
        # SIGTERM: stop listening, let requests in flight finish (each is answered only once
        # its delivery is stored), then stop the dispatcher and close the store.
        timeout_graceful_shutdown=settings.webhook_drain_seconds,
    )


def build_server(settings: ReceiverSettings, *, configure_logging: bool = True) -> uvicorn.Server:
    """A uvicorn server for the receiver app and its dispatcher (started by the lifespan)."""
    # Should a secret ever reach a log line anyway, the redaction filter masks it.
    register_secrets(settings.secrets)
    if configure_logging:
        configure_json_logging()
    return uvicorn.Server(server_config(settings, create_app(settings)))


def serve(settings: ReceiverSettings | None = None) -> None:
    """Run the receiver until interrupted. Raises SettingsError or StackError before starting."""
    settings = settings or load_settings()
    if not port_is_free(settings.host, settings.webhook_port):
        raise StackError(
            f"port {settings.webhook_port} on {settings.host} is taken by another program; "
            "stop it or set GANTRY_WEBHOOK_PORT to a free port"
        )
    server = build_server(settings)
    server.run()
    if not server.started:
        raise StackError(
            f"the webhook receiver could not listen on {settings.host}:{settings.webhook_port}"
        )
