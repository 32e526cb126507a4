"""A local HTTP server that answers like Datadog's API: events and DORA deployments/failures.

Shapes follow the shared notes on Datadog: ``DD-API-KEY`` checked (403 ``{"errors": [...]}``),
202 for events, 200 ``{"data": {"id", "type"}}`` for DORA, 400 with ``{errors: [{status,
title, detail}]}`` for bodies it rejects, 429 with the rate-limit headers. Faults are queued
with ``fail_next``; every request is recorded.

``LoopbackServer`` is the uvicorn-in-a-thread lifecycle the other fakes reuse.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

API_KEY = "0123456789abcdef0123456789abcdef"  # the shape of a Datadog API key (32 hex)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any


@dataclass
class Fault:
    status: int
    path_contains: str = ""
    headers: dict[str, str] | None = None


def _bad_request(detail: str) -> JSONResponse:
    errors = [{"status": "400", "title": "Bad Request", "detail": detail}]
    return JSONResponse({"errors": errors}, status_code=400)


class FakeDatadog(LoopbackServer):
    """Datadog API stand-in. ``events``, ``deployments`` and ``failures`` hold what it took."""

    def __init__(self, *, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.events: list[dict[str, Any]] = []
        self.deployments: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._ids = itertools.count(5001)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/api/v1/events", self._event, methods=["POST"]),
                Route("/api/v2/dora/deployment", self._deployment, methods=["POST"]),
                Route("/api/v2/dora/failure", self._failure, methods=["POST"]),
            ]
        )

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        path_contains: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (Datadog's error body)."""
        with self._lock:
            self._faults.extend(Fault(status, path_contains, headers) for _ in range(times))

    async def _admit(self, request: Request) -> tuple[Any, Response | None]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.url.path,
                    {k.lower(): v for k, v in request.headers.items()},
                    body,
                )
            )
            fault = next((f for f in self._faults if f.path_contains in request.url.path), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            return body, self._fault_response(fault)
        if request.headers.get("dd-api-key") != self.api_key:
            return body, JSONResponse({"errors": ["Forbidden"]}, status_code=403)
        if not isinstance(body, dict):
            return body, _bad_request("Invalid JSON body")
        return body, None

    def _fault_response(self, fault: Fault) -> Response:
        headers = dict(fault.headers or {})
        if fault.status == 429:
            headers.setdefault("X-RateLimit-Limit", "500")
            headers.setdefault("X-RateLimit-Period", "60")
            headers.setdefault("X-RateLimit-Remaining", "0")
            headers.setdefault("X-RateLimit-Reset", "0")
            headers.setdefault("X-RateLimit-Name", "dora_deployment")
            return JSONResponse({"errors": ["Too many requests"]}, 429, headers=headers)
        if fault.status == 403:
            return JSONResponse({"errors": ["Forbidden"]}, 403, headers=headers)
        if fault.status == 400:
            return _bad_request("injected")
        return JSONResponse({"errors": ["Internal Server Error"]}, fault.status, headers=headers)

    async def _event(self, request: Request) -> Response:
        body, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        title, text = body.get("title"), body.get("text")
        if not isinstance(title, str) or not title or not isinstance(text, str):
            return JSONResponse({"errors": ["Event title and text are required"]}, 400)
        if len(text) > 4000:
            return JSONResponse({"errors": ["Event text is longer than 4000 characters"]}, 400)
        event_id = next(self._ids)
        event = {
            "id": event_id,
            "title": title,
            "text": text,
            "date_happened": body.get("date_happened", int(time.time())),
            "priority": body.get("priority", "normal"),
            "tags": body.get("tags", []),
            "alert_type": body.get("alert_type", "info"),
            "url": f"https://app.datadoghq.com/event/event?id={event_id}",
        }
        self.events.append(body)
        return JSONResponse({"status": "ok", "event": event}, status_code=202)

    async def _deployment(self, request: Request) -> Response:
        body, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        attributes = (body.get("data") or {}).get("attributes")
        if not isinstance(attributes, dict):
            return _bad_request("data.attributes is required")
        if not isinstance(attributes.get("service"), str) or not attributes["service"]:
            return _bad_request("service is required")
        problem = _times_problem(attributes, required=("started_at", "finished_at"))
        if problem:
            return _bad_request(problem)
        if "git" in attributes and not _git_ok(attributes["git"]):
            return _bad_request("git needs commit_sha and repository_url")
        self.deployments.append(attributes)
        data = {"id": f"dep-{next(self._ids)}", "type": "dora_deployment"}
        return JSONResponse({"data": data}, status_code=200)

    async def _failure(self, request: Request) -> Response:
        body, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        attributes = (body.get("data") or {}).get("attributes")
        if not isinstance(attributes, dict):
            return _bad_request("data.attributes is required")
        if not attributes.get("services") and not attributes.get("team"):
            return _bad_request("services or team is required")
        problem = _times_problem(attributes, required=("started_at",))
        if problem:
            return _bad_request(problem)
        self.failures.append(attributes)
        data = {"id": f"fail-{next(self._ids)}", "type": "dora_failure"}
        return JSONResponse({"data": data}, status_code=200)


def _times_problem(attributes: dict[str, Any], required: tuple[str, ...]) -> str | None:
    for name in required:
        if not isinstance(attributes.get(name), int):
            return f"{name} must be an int64 epoch timestamp"
    started, finished = attributes.get("started_at"), attributes.get("finished_at")
    if isinstance(started, int) and isinstance(finished, int) and finished < started:
        return "finished_at must not be before started_at"
    return None


def _git_ok(git: Any) -> bool:
    return (
        isinstance(git, dict)
        and isinstance(git.get("commit_sha"), str)
        and isinstance(git.get("repository_url"), str)
    )


@pytest.fixture
def datadog_api() -> Iterator[FakeDatadog]:
    server = FakeDatadog()
    server.start()
    try:
        yield server
    finally:
        server.stop()
