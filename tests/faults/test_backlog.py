"""A burst of signed deliveries at 200/s while no worker runs, then a worker starts.

A throwaway Prefect server of the test's own, the receiver over a real SQLite store, the bench's
load generator (``bench/receiver_load.py``) and then Gantry's warm worker. What must hold: every
delivery is acknowledged ``202`` and stored; each becomes exactly one flow run, which waits
Scheduled while no worker runs; once the worker starts, every run ends Completed and each
delivery was executed exactly once (the flows' ledger).

The issue's figure, 1,000 deliveries at 200/s, is ``make bench``'s: there the dispatcher creating
every run is measured. Here each delivery is also executed by a real flow-run process, which
costs seconds of CPU each, so ``DELIVERIES`` keeps the test within about two minutes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun

from bench.receiver_load import load
from tests.faults.bounded import await_until, wait_for
from tests.faults.test_worker_killed import Setup, start_worker, stop_worker
from tests.faults.test_worker_killed import setup as setup  # the module's server and pool
from tests.plugins.prefect_server import prefect_api
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver, receiver_settings

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(420)]
DELIVERIES = 20
RATE = 200.0
REPOSITORY = "acme/backlog"
# Runs at a time: a worker submitting a whole backlog at once starts an interpreter per run,
# and on a small machine the Prefect server (SQLite) then answers its submissions 503, which
# Prefect reports as crashes.
WORKER_LIMIT = 4
DISPATCH_DEADLINE = 120.0
RUN_DEADLINE = 240.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stored(store_file: Path) -> Counter[str]:
    """The store's deliveries counted by status, read through a read-only connection."""
    with sqlite3.connect(f"{store_file.absolute().as_uri()}?mode=ro", uri=True, timeout=30) as db:
        rows = db.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
    return Counter({str(status): int(count) for status, count in rows})


async def pipeline_runs(client: PrefectClient, setup: Setup) -> list[FlowRun]:
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[setup.deployments["pr"]])),
        limit=DELIVERIES + 50,
    )


async def test_a_backlog_received_without_a_worker_runs_exactly_once_when_one_starts(
    setup: Setup, tmp_path: Path
) -> None:
    first_number = 50_000
    numbers = [first_number + i for i in range(DELIVERIES)]
    store_file = tmp_path / "webhooks.db"
    with prefect_api(setup.settings), ServedReceiver(receiver_settings(tmp_path)) as served:
        figures = await load(
            served.url,
            payloads.SECRET,
            count=DELIVERIES,
            rate=RATE,
            repository=REPOSITORY,
            first_number=first_number,
        )
        # What GitHub sees: every delivery acknowledged, none lost.
        assert figures["by_status"] == {"202": DELIVERIES}, figures
        assert sum(stored(store_file).values()) == DELIVERIES

        def all_dispatched() -> bool:
            return stored(store_file) == Counter({"dispatched": DELIVERIES})

        await asyncio.to_thread(
            wait_for, all_dispatched, "every stored delivery dispatched", DISPATCH_DEADLINE
        )

    with prefect_api(setup.settings):
        async with get_client() as client:
            runs = await pipeline_runs(client, setup)
            # One run per delivery, and none has run: no worker was there.
            assert len(runs) == DELIVERIES
            assert {run.state_name for run in runs} == {"Scheduled"}
            assert setup.ledger.read_text() == ""

            worker = start_worker(setup, "backlog", "--limit", str(WORKER_LIMIT))
            started = time.monotonic()
            try:

                async def all_final() -> bool:
                    assert worker.proc.poll() is None, worker.tail()
                    current = await pipeline_runs(client, setup)
                    return all(run.state is not None and run.state.is_final() for run in current)

                await await_until(all_final, "every backlog run ends", RUN_DEADLINE)
            finally:
                stop_worker(worker)
            seconds = time.monotonic() - started
            runs = await pipeline_runs(client, setup)
            assert len(runs) == DELIVERIES
            assert Counter(run.state_name for run in runs) == {"Completed": DELIVERIES}

    # Executed, not only created: each delivery's pull request exactly once.
    executed = Counter(line.split()[0] for line in setup.ledger.read_text().splitlines())
    assert executed == Counter({f"pr:{number}": 1 for number in numbers}), executed
    print(f"{DELIVERIES} backlog runs executed in {seconds:.0f} s after the worker started")
