"""The dispatcher sends ``gantry.webhook.backlog`` at each pass, to a real DogStatsD stand-in.

No Prefect server: its address is a closed loopback port, so each pass finds the deliveries
still pending (an outage, when the backlog matters most) and the dispatcher passes again.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient

from clients.retry import RetryPolicy
from core.ports import free_port
from tests.webhooks import payloads
from tests.webhooks.statsd import at_least, metrics_to_agent
from webhooks.dispatcher import Dispatcher
from webhooks.events import PipelineRequest, map_event
from webhooks.store import Delivery, SqliteStore

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
BACKLOG = "gantry.webhook.backlog"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pending_push() -> Delivery:
    delivery_id = payloads.new_delivery_id()
    payload = payloads.push()
    request = map_event("push", delivery_id, payload, repositories=payloads.ALLOWLIST)
    assert isinstance(request, PipelineRequest)
    return Delivery(id=delivery_id, event="push", payload="{}", request=request)


async def test_each_dispatcher_pass_sends_the_number_of_deliveries_left_pending(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "webhooks.db")
    for _ in range(3):
        assert store.add(pending_push())
    down = f"http://127.0.0.1:{free_port()}/api"
    dispatcher = Dispatcher(
        store,
        backoff=RetryPolicy(backoff=0.05, backoff_cap=0.05),
        client_factory=lambda: PrefectClient(down),
    )
    with metrics_to_agent() as agent:
        task = asyncio.create_task(dispatcher.run())
        try:
            passes = await at_least(agent, BACKLOG, 3)
        finally:
            dispatcher.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
    assert dispatcher.failures >= 2  # the passes before the last each ended by the outage
    assert {(d.value, d.type) for d in passes} == {("3", "g")}
    assert store.count_pending() == 3
