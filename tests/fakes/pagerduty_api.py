"""A local HTTP server that answers like PagerDuty's Events API v2 (``POST /v2/enqueue``).

202 ``{"status": "success", "message": "Event processed", "dedup_key"}``; 400 ``{"status":
"invalid event", "message": "Event object is invalid", "errors": [...]}`` for malformed events
or unknown routing keys; 429 and 5xx injected with ``fail_next``. Alerts keep their state by
dedup key; every request is recorded.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.datadog_api import RecordedRequest
from tests.fakes.loopback import LoopbackServer

ROUTING_KEY = "R0123456789ABCDEF0123456789ABCDE"  # 32 characters, like an integration key
SEVERITIES = {"critical", "error", "warning", "info"}
ACTIONS = {"trigger": "triggered", "acknowledge": "acknowledged", "resolve": "resolved"}


def _invalid(*errors: str) -> JSONResponse:
    body = {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)}
    return JSONResponse(body, status_code=400)


class FakePagerDuty(LoopbackServer):
    """Events API v2 stand-in. ``alerts`` maps dedup keys to their state."""

    def __init__(self, *, routing_key: str = ROUTING_KEY) -> None:
        super().__init__()
        self.routing_key = routing_key
        self.requests: list[RecordedRequest] = []
        self.alerts: dict[str, str] = {}
        self._faults: list[int] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v2/enqueue", self._enqueue, methods=["POST"])])

    @property
    def events_url(self) -> str:
        return f"{self.url}/v2/enqueue"

    def fail_next(self, status: int, *, times: int = 1) -> None:
        with self._lock:
            self._faults.extend([status] * times)

    async def _enqueue(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    "POST",
                    request.url.path,
                    {k.lower(): v for k, v in request.headers.items()},
                    body,
                )
            )
            fault = self._faults.pop(0) if self._faults else None
        if fault == 429:
            return JSONResponse(
                {
                    "status": "throttle event",
                    "message": "Requests for this service are "
                    "arriving too quickly.  Please retry later.",
                },
                status_code=429,
            )
        if fault is not None:
            return Response("Internal Server Error", status_code=fault)
        if not isinstance(body, dict):
            return _invalid("Event object is not valid JSON")
        if len(raw) > 512 * 1024:
            return _invalid("Event object is larger than 512 KB")
        if body.get("routing_key") != self.routing_key:
            return _invalid("'routing_key' is invalid")
        action = body.get("event_action")
        if action not in ACTIONS:
            return _invalid("'event_action' is missing or invalid")
        key = body.get("dedup_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 255):
            return _invalid("'dedup_key' must be 1 to 255 characters")
        if action == "trigger":
            problem = _payload_problem(body.get("payload"))
            if problem:
                return _invalid(problem)
            key = key or uuid.uuid4().hex
        elif not key:
            return _invalid("'dedup_key' is required to acknowledge or resolve")
        self.alerts[key] = ACTIONS[action]
        return JSONResponse(
            {"status": "success", "message": "Event processed", "dedup_key": key},
            status_code=202,
        )


def _payload_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return "'payload' is required for trigger events"
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary or len(summary) > 1024:
        return "'payload.summary' must be 1 to 1024 characters"
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        return "'payload.source' is required"
    if payload.get("severity") not in SEVERITIES:
        return "'payload.severity' must be critical, error, warning or info"
    return None


@pytest.fixture
def pagerduty_api() -> Iterator[FakePagerDuty]:
    server = FakePagerDuty()
    server.start()
    try:
        yield server
    finally:
        server.stop()
