"""The dispatcher: recorded deliveries become flow runs, once each, whatever fails meanwhile.

Each delivery id is its flow run's idempotency key, so a delivery dispatched twice (a crash
between creating the run and marking it, or two replicas on one database) still makes one run.
While the Prefect API is unreachable deliveries stay pending and the loop backs off (jittered,
exponential, capped); a restarted receiver picks up whatever is pending. The app wakes the loop
after each stored delivery; a slow poll is only the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Cancelled, Cancelling

from clients.metrics import get_metrics
from clients.retry import RetryPolicy
from core.logconfig import bind
from webhooks.events import PipelineRequest
from webhooks.store import Delivery, DeliveryStore

logger = logging.getLogger("gantry.webhooks.dispatcher")

SUPERSEDABLE = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
ClientFactory = Callable[[], PrefectClient]


class PrefectUnavailable(Exception):
    """The Prefect API could not take a flow run now; the delivery stays pending."""


def _unavailable(exc: BaseException) -> bool:
    """The API itself is down or overloaded: every delivery would fail the same way now."""
    if isinstance(exc, httpx.TransportError | TimeoutError | OSError):
        return True
    if isinstance(exc, PrefectHTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]


class Dispatcher:
    """Turns pending deliveries into flow runs; run ``run()`` as a task for the app's lifetime."""

    def __init__(
        self,
        store: DeliveryStore,
        *,
        poll_seconds: float = 30.0,
        backoff: RetryPolicy | None = None,
        batch: int = 100,
        max_attempts: int = 100,
        client_factory: ClientFactory = get_client,
    ) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        # Prefect being down is retried for as long as it lasts: only the delay policy is shared.
        self.backoff = backoff or RetryPolicy(backoff=0.5, backoff_cap=30.0)
        self.batch = batch
        self.max_attempts = max_attempts
        self.client_factory = client_factory
        self.failures = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def wake(self) -> None:
        """A delivery was stored: dispatch now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until stopped: at once when woken, on a slow poll otherwise."""
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self.drain()
            except PrefectUnavailable as exc:
                self.failures += 1
                delay = self.backoff.delay(self.failures)
                logger.warning(
                    "Prefect API unavailable (%s); retrying pending deliveries in %.1f s",
                    exc,
                    delay,
                )
                # Wake-ups are not honoured here: a burst of deliveries must not hammer a
                # server that is down. They are all stored and wait for the next pass.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            except Exception:
                # The store or the client setup failed: nothing is lost, try again later.
                logger.exception("dispatch pass failed; pending deliveries stay pending")
                self.failures += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.backoff.delay(self.failures))
                continue
            self.failures = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def drain(self) -> int:
        """Dispatch every pending delivery, oldest first; how many became flow runs.

        Raises PrefectUnavailable when the API is unreachable (the rest stay pending).
        """
        dispatched = 0
        while True:
            pending = await asyncio.to_thread(self.store.pending, self.batch)
            get_metrics().webhook_backlog(len(pending))
            if not pending:
                return dispatched
            in_batch = 0
            async with self.client_factory() as client:
                for delivery in pending:
                    if await self.dispatch(client, delivery) is not None:
                        in_batch += 1
            dispatched += in_batch
            # A full batch that moved nothing holds only deliveries waiting for a retry.
            if len(pending) < self.batch or in_batch == 0:
                get_metrics().webhook_backlog(await asyncio.to_thread(self.store.count_pending))
                return dispatched

    async def dispatch(self, client: PrefectClient, delivery: Delivery) -> FlowRun | None:
        """Create the delivery's flow run and record it; None when it can never be dispatched."""
        request = delivery.request
        with bind(delivery_id=delivery.id):
            if request is None:
                await asyncio.to_thread(
                    self.store.mark_failed, delivery.id, "no pipeline request recorded"
                )
                return None
            with bind(pipeline=request.pipeline, repository=request.repository_name):
                try:
                    flow_run = await self._create_run(client, request, delivery.received_at)
                except Exception as exc:
                    await self._failed(delivery, exc)
                    return None
                if request.pipeline == "pr":
                    # Before marking: "dispatched" means the older runs are cancelled too. A
                    # crash in between redispatches to the same run (same idempotency key).
                    await self.supersede(client, request, flow_run)
                await asyncio.to_thread(self.store.mark_dispatched, delivery.id, str(flow_run.id))
                logger.info("delivery dispatched as flow run %s (%s)", flow_run.name, flow_run.id)
                return flow_run

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        reason = _describe(exc)
        if _unavailable(exc):
            await asyncio.to_thread(self.store.record_attempt, delivery.id, reason)
            raise PrefectUnavailable(reason) from exc
        if isinstance(exc, ObjectNotFound) and delivery.attempts + 1 < self.max_attempts:
            # The deployment may not be registered yet (a stack still starting): this delivery
            # waits for the next pass; the ones behind it go on.
            logger.warning("deployment not found, delivery kept for a later pass: %s", reason)
            await asyncio.to_thread(self.store.record_attempt, delivery.id, reason)
            return
        logger.error("delivery cannot be dispatched: %s", reason)
        await asyncio.to_thread(self.store.mark_failed, delivery.id, reason)

    async def _create_run(
        self, client: PrefectClient, request: PipelineRequest, received_at: datetime
    ) -> FlowRun:
        # The flow measures its queue time (webhook received -> running) from this.
        parameters = {**request.parameters, "received_at": received_at.isoformat()}
        return await arun_deployment(
            request.deployment,
            client=client,
            parameters=parameters,
            timeout=0,
            idempotency_key=request.idempotency_key,
            flow_run_name=request.run_name,
            tags=request.tags,
            as_subflow=False,
        )

    async def supersede(
        self, client: PrefectClient, request: PipelineRequest, newest: FlowRun
    ) -> list[FlowRun]:
        """Cancel older PR runs of the same repository and PR still waiting or running.

        Only runs created before ``newest`` go: a late redispatch of an old delivery (which
        returns its existing run) never cancels the newer push.
        """
        if request.pipeline != "pr" or request.pr_number is None:
            return []
        if "rerun" in request.tags:
            # A re-run button asks for one more run of one commit, often an older one: only a
            # push says which commit is newest, so a re-run never cancels another run.
            return []
        pr_tags = ["pipeline:pr", f"repo:{request.repository_name}", f"pr:{request.pr_number}"]
        cancelled: list[FlowRun] = []
        try:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=pr_tags),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=SUPERSEDABLE)),
                )
            )
            for run in runs:
                if run.id == newest.id or not set(pr_tags) <= set(run.tags):
                    continue
                if newest.created is None or run.created is None or run.created >= newest.created:
                    continue
                message = f"superseded by {newest.name}"
                # A run not started yet is simply cancelled; one in progress is cancelled
                # through its worker, which stops the steps it runs.
                started = run.state_type in (StateType.PENDING, StateType.RUNNING)
                state: Any = Cancelling(message=message) if started else Cancelled(message=message)
                await client.set_flow_run_state(run.id, state, force=True)
                logger.info("cancelled flow run %s (%s): %s", run.name, run.id, message)
                cancelled.append(run)
        except Exception as exc:
            # Superseding saves work; failing at it must never lose or fail the delivery.
            logger.warning("could not cancel superseded runs: %s", _describe(exc))
        return cancelled
