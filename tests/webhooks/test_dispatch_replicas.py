"""Two receiver replicas' dispatchers on one PostgreSQL store make one flow run per delivery.

The store does not claim rows: each replica's dispatcher reads the same pending deliveries and
dispatches every one of them. The delivery id, the flow run's Prefect idempotency key, is the
guard. Both replicas here are the real ``Dispatcher`` on its own ``PostgresStore`` connection
pool and its own Prefect client, against a throwaway PostgreSQL server and prefect.yaml's real
deployments on the session's Prefect server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun

from deployments.prefect_server import PrefectServer
from tests.webhooks import payloads
from webhooks.dispatcher import Dispatcher
from webhooks.events import PipelineRequest, map_event
from webhooks.store import Delivery, PostgresStore

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(180)]
DELIVERIES = 5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Each replica's own store (and connection pool) on the one database."""
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    yield first, second
    first.close()
    second.close()


def a_push() -> Delivery:
    delivery_id = payloads.new_delivery_id()
    payload = payloads.push(after=uuid.uuid4().hex + "0" * 8)
    request = map_event("push", delivery_id, payload, repositories=payloads.ALLOWLIST)
    assert isinstance(request, PipelineRequest)
    return Delivery(id=delivery_id, event="push", payload=json.dumps(payload), request=request)


async def runs_of(client: PrefectClient, delivery_id: str) -> list[FlowRun]:
    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"delivery:{delivery_id}"]))
    )


async def replica_dispatches(store: PostgresStore, pending: list[Delivery]) -> list[UUID]:
    """One replica's dispatcher pass over what it read as pending, with its own client."""
    dispatcher = Dispatcher(store)
    made: list[UUID] = []
    async with get_client() as client:
        for delivery in pending:
            run = await dispatcher.dispatch(client, delivery)
            assert run is not None
            made.append(run.id)
    return made


async def test_two_replicas_dispatching_the_same_deliveries_make_one_run_each(
    deployed: PrefectServer, replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    first, second = replicas
    deliveries = [a_push() for _ in range(DELIVERIES)]
    assert first.add_many(deliveries) == [True] * DELIVERIES
    ids = {d.id for d in deliveries}

    # Both replicas' passes begin before either marks anything: each reads every delivery
    # as pending (nothing is claimed), and each dispatches all of them, at once.
    seen_first, seen_second = first.pending(), second.pending()
    assert [d.id for d in seen_first] == [d.id for d in seen_second]
    assert {d.id for d in seen_first} == ids
    made_first, made_second = await asyncio.gather(
        replica_dispatches(first, seen_first), replica_dispatches(second, seen_second)
    )

    # Each delivery dispatched twice is one flow run, which both replicas were given.
    assert made_first == made_second
    async with get_client() as client:
        for delivery_id, run_id in zip([d.id for d in seen_first], made_first, strict=True):
            (run,) = await runs_of(client, delivery_id)
            assert run.id == run_id and run.idempotency_key == delivery_id
            for store in (first, second):
                recorded = store.get(delivery_id)
                assert recorded is not None and recorded.status == "dispatched"
                assert recorded.flow_run_id == str(run_id)
    assert first.pending() == second.pending() == []
