"""Serving the receiver: uvicorn on the configured (loopback by default) address, JSON logs."""

from __future__ import annotations

import uvicorn

from core.logconfig import configure_json_logging
from core.ports import StackError, port_is_free
from core.redact import register_secrets
from webhooks.app import create_app
from webhooks.settings import ReceiverSettings, load_settings


def build_server(settings: ReceiverSettings, *, configure_logging: bool = True) -> uvicorn.Server:
    """A uvicorn server for the receiver app and its dispatcher (started by the lifespan)."""
    # Should a secret ever reach a log line anyway, the redaction filter masks it.
    register_secrets(settings.secrets)
    if configure_logging:
        configure_json_logging()
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.webhook_port,
        # Our JSON logging, not uvicorn's formatters; no access log (it would log every probe).
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        # GitHub waits 10 s for an answer; a stuck client must not hold a worker slot longer.
        timeout_keep_alive=5,
    )
    return uvicorn.Server(config)


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
