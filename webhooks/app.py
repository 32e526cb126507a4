"""The GitHub webhook receiver: verify, bound, record, answer fast; dispatch in the background.

``POST /webhooks/github``: the signature's form is checked before the body is read, the body
is read up to the size cap, the HMAC is checked before anything is parsed, and a delivery is
recorded in the store before GitHub is answered 202 (group commit: deliveries arriving
together share one transaction). The body must arrive within ``webhook_body_timeout``.
``GET /healthz`` says the process lives; ``GET /readyz`` says whether the store is writable:
readiness depends on the store alone, since the store is what keeps a delivery through a
Prefect outage (the Prefect API's reachability is reported beside it, as information).
The dispatcher runs on its own thread and event loop (``dispatch_thread``), or, with
``GANTRY_WEBHOOK_DISPATCHER=process`` (the local stack), in a process of its own
(``dispatch_process``) that reads the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from prefect.client.orchestration import get_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from clients.metrics import WebhookOutcome, get_metrics
from clients.retry import RetryPolicy
from core.logconfig import bind
from webhooks.dispatch_thread import DispatcherThread
from webhooks.dispatcher import ClientFactory, Dispatcher
from webhooks.events import Ignored, PayloadError, action_of, map_event
from webhooks.group_commit import GroupCommit
from webhooks.settings import ReceiverSettings
from webhooks.signature import HEADER, SignatureError, check_format, verify
from webhooks.store import Delivery, DeliveryStore, StoreError, open_store

logger = logging.getLogger("gantry.webhooks")

_DELIVERY_ID = re.compile(r"[A-Za-z0-9-]{1,100}")
_EVENT = re.compile(r"[a-z_]{1,64}")
READY_TIMEOUT = 3.0


class BodyTooLarge(Exception):
    """The body exceeds the cap (declared or counted while streaming)."""


class BodyTooSlow(Exception):
    """The body did not arrive within its deadline."""


class BadRequest(Exception):
    """The request is malformed in a way the caller can fix."""


async def read_capped(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The body, refusing more than ``limit`` bytes without ever holding more than that, or
    taking longer than ``timeout`` seconds in all (BodyTooSlow)."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_capped(request, limit)
    except TimeoutError:
        raise BodyTooSlow from None


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    # Counted as it streams: a missing or lying Content-Length cannot get past the cap.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(code: int, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=code)


class Receiver:
    """The receiver's handlers, bound to one store and one dispatcher."""

    def __init__(
        self, settings: ReceiverSettings, store: DeliveryStore, dispatcher: Dispatcher
    ) -> None:
        self.settings = settings
        self.store = store
        self.writer = GroupCommit(store)
        self.dispatcher = dispatcher
        # Set by the lifespan to the dispatcher thread's wake-up while it runs.
        self.wake: Callable[[], None] = lambda: None

    def _count(self, outcome: WebhookOutcome) -> None:
        get_metrics().webhook_delivery(outcome)

    def _reject(self, code: int, error: str) -> JSONResponse:
        self._count("rejected")
        return _answer(code, error=error)

    async def github(self, request: Request) -> JSONResponse:
        try:
            header = check_format(request.headers.get(HEADER))
        except SignatureError as exc:
            logger.warning("rejected a delivery: %s", exc)
            return self._reject(401, "missing or invalid signature")
        try:
            body = await read_capped(
                request,
                self.settings.webhook_max_body_bytes,
                self.settings.webhook_body_timeout,
            )
        except BodyTooSlow:
            logger.warning(
                "rejected a delivery whose body took over %.0f s",
                self.settings.webhook_body_timeout,
            )
            self._count("rejected")
            # The rest of the body is not read: the connection cannot carry another request.
            response = _answer(408, error="request body timed out")
            response.headers["connection"] = "close"
            return response
        except BodyTooLarge:
            logger.warning(
                "rejected a delivery over %d bytes", self.settings.webhook_max_body_bytes
            )
            return self._reject(413, "payload too large")
        except BadRequest as exc:
            return self._reject(400, str(exc))
        try:
            verify(header, body, self.settings.secrets)
        except SignatureError as exc:
            logger.warning("rejected a delivery: %s", exc)
            return self._reject(401, "missing or invalid signature")
        # Authenticated from here on; the headers are still untrusted in form.
        event = request.headers.get("x-github-event", "")
        delivery_id = request.headers.get("x-github-delivery", "")
        if not _EVENT.fullmatch(event) or not _DELIVERY_ID.fullmatch(delivery_id):
            return self._reject(400, "missing or invalid X-GitHub-Event or X-GitHub-Delivery")
        with bind(delivery_id=delivery_id):
            return await self._accept(event, delivery_id, body)

    async def _accept(self, event: str, delivery_id: str, body: bytes) -> JSONResponse:
        try:
            text = body.decode("utf-8")
            payload = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return self._reject(400, "body is not JSON")
        if not isinstance(payload, dict):
            return self._reject(400, "body is not a JSON object")
        action = action_of(payload)
        if event == "ping":
            mapped: Any = Ignored(reason="ping")
        else:
            try:
                mapped = map_event(
                    event,
                    delivery_id,
                    payload,
                    approvals=self.settings.webhook_approval,
                    repositories=self.settings.repositories,
                )
            except PayloadError as exc:
                logger.warning("rejected %s delivery: %s", event, exc)
                return self._reject(422, str(exc))
        ignored = isinstance(mapped, Ignored)
        delivery = Delivery(
            id=delivery_id,
            event=event,
            action=action,
            payload=text,
            request=None if ignored else mapped,
            status="ignored" if ignored else "pending",
            last_error=mapped.reason if ignored else None,
        )
        try:
            new = await self.writer.add(delivery)
        except StoreError as exc:
            logger.error("could not record the delivery: %s", exc)
            # Not 202: GitHub shows the failure, and reconciliation asks for it again.
            return _answer(503, error="delivery store unavailable")
        if not new:
            self._count("duplicate")
            logger.info("duplicate %s delivery ignored", event)
            return _answer(200, status="duplicate", delivery=delivery_id)
        if event == "ping":
            return _answer(200, status="pong", delivery=delivery_id)
        if ignored:
            self._count("ignored")
            logger.info("%s delivery starts nothing: %s", event, mapped.reason)
            return _answer(202, status="ignored", delivery=delivery_id, reason=mapped.reason)
        self._count("accepted")
        logger.info("accepted %s delivery for the %s pipeline", event, mapped.pipeline)
        self.wake()
        return _answer(202, status="accepted", delivery=delivery_id, pipeline=mapped.pipeline)

    async def _prefect_problem(self) -> Exception | None:
        try:
            async with asyncio.timeout(READY_TIMEOUT), self.dispatcher.client_factory() as client:
                return await client.api_healthcheck()
        except Exception as exc:
            return exc

    async def healthz(self, request: Request) -> JSONResponse:
        del request
        return _answer(200, status="ok")

    async def readyz(self, request: Request) -> JSONResponse:
        del request
        store, prefect = await asyncio.gather(self._store_state(), self._prefect_state())
        # Prefect down is no reason to refuse deliveries: they are stored and dispatched
        # once it is back. A refused delivery (5xx) is one GitHub never retries.
        ready = store == "ok"
        return _answer(200 if ready else 503, ready=ready, store=store, prefect=prefect)

    async def _store_state(self) -> str:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.store.check_writable), READY_TIMEOUT)
        except (StoreError, TimeoutError) as exc:
            logger.warning("readiness: delivery store not writable: %s", exc)
            return "not writable"
        return "ok"

    async def _prefect_state(self) -> str:
        # On a thread with a loop of its own: the Prefect client's setup is CPU the request
        # loop would otherwise spend between two deliveries' answers.
        try:
            problem = await asyncio.to_thread(asyncio.run, self._prefect_problem())
        except Exception as exc:
            problem = exc
        if problem is not None:
            logger.warning("readiness: Prefect API unreachable: %s", type(problem).__name__)
            return "unreachable"
        return "ok"


def create_app(
    settings: ReceiverSettings,
    store: DeliveryStore | None = None,
    *,
    dispatch: bool = True,
    client_factory: ClientFactory = get_client,
) -> Starlette:
    """The ASGI app. It opens the store named by the settings unless given one, and runs the
    dispatcher on a thread for its lifetime when ``dispatch`` is true and the settings do not
    leave dispatching to a separate process (``webhook_dispatcher``)."""
    opened = store or open_store(settings.store_url)
    dispatcher = Dispatcher(
        opened,
        poll_seconds=settings.webhook_poll_seconds,
        backoff=RetryPolicy(
            backoff=settings.webhook_backoff_initial, backoff_cap=settings.webhook_backoff_cap
        ),
        client_factory=client_factory,
    )
    receiver = Receiver(settings, opened, dispatcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        del app
        threaded = dispatch and settings.webhook_dispatcher == "thread"
        runner = DispatcherThread(dispatcher) if threaded else None
        if runner is not None:
            runner.start()
            receiver.wake = runner.wake
        try:
            yield
        finally:
            # uvicorn has drained the requests in flight by now; their writes are done.
            await receiver.writer.close()
            if runner is not None:
                # A dispatch in flight gets a moment to record its run; the store and the
                # idempotency key cover a dispatch cut short.
                await asyncio.to_thread(runner.stop, 10)
            if store is None:
                opened.close()

    app = Starlette(
        routes=[
            Route("/webhooks/github", receiver.github, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
            Route("/readyz", receiver.readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    app.state.dispatcher = dispatcher
    app.state.store = opened
    return app
