"""Gantry's Prefect worker: Prefect's own workers plus the ``gantry.worker.heartbeat`` metric.

Each poll of the work pool that the Prefect API answered sends one DogStatsD count
``gantry.worker.heartbeat`` (value 1, tag ``work_pool:<pool>``, and ``env:<DD_ENV>`` when the
environment variable ``DD_ENV`` is set), so Datadog's worker-not-polling monitor sees silence
exactly when no worker polls. Nothing is sent for a poll that raised (API unreachable, 5xx), nor
for the polls Prefect skips without asking the API while the worker has not yet synchronized with
it. The rate is one per PREFECT_WORKER_QUERY_SECONDS per worker (Prefect adds +-30% jitter and
backs off after repeated failures). Datagrams go to ``DD_AGENT_HOST``/``DD_DOGSTATSD_PORT``; with
neither set the metric is off and the worker runs as usual.

Run it where ``prefect worker start`` would run::

    python -m deployments.worker --pool NAME --type warm|process|kubernetes [--name NAME]

``warm`` is Gantry's own worker type, ``gantry-warm`` (deployments/warm/): flow runs start in
interpreters that have already imported Prefect and the pipelines (``--warm-size`` of them wait,
``--preload`` names the modules), and a run scheduled in the pool wakes the worker through
Prefect's event stream instead of waiting for the next poll.

It stops gracefully on SIGTERM or SIGINT (a second signal kills it at once).

The classes keep Prefect's worker types (``type`` is ``process`` or ``kubernetes``: work pools,
the API and the UI see ordinary workers) but register in Prefect's type registry under keys of
their own, ``gantry-process`` and ``gantry-kubernetes``. Registering under ``process`` would
replace Prefect's ProcessWorker for every lookup in a process that imported this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.client.schemas.objects import FlowRun
from prefect.logging.loggers import get_worker_logger
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessWorker
from prefect_kubernetes.worker import KubernetesWorker

from clients.metrics import get_metrics
from core.redact import register_secret
from deployments.crashes import watch_crashes
from deployments.warm.worker import DEFAULT_WARM_SIZE, PIPELINE_MODULES, WarmWorker
from flows.steps.sandbox.select import reap_stack_leftovers

# Datadog's own name for the environment; the worker's pod already sets it (modules/prefect).
ENV_ENVIRONMENT = "DD_ENV"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

AnyWorker = BaseWorker[Any, Any, Any]


# At run time the mixin is a plain class: a subclass of BaseWorker would register itself in
# Prefect's worker type registry. mypy checks it against BaseWorker all the same.
if TYPE_CHECKING:
    _WorkerBase = AnyWorker
else:
    _WorkerBase = object


class _HeartbeatMixin(_WorkerBase):
    """Sends ``gantry.worker.heartbeat`` after each poll that asked the Prefect API."""

    # The work pool's name once a sync with the API found the pool, None before that.
    _synced_pool: str | None = None

    async def setup(self) -> None:
        # Prefect starts every setup unsynchronized, so a restarted worker counts again only
        # after its first sync.
        self._synced_pool = None
        await super().setup()

    async def sync_with_backend(self) -> None:
        await super().sync_with_backend()
        # Prefect's poll skips the API (returns [] at once) until a sync has recorded the work
        # pool; a sync that raised or found no pool leaves the worker as it was.
        try:
            self._synced_pool = self.work_pool.name
        except RuntimeError:  # the pool is not known yet
            return

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        # Decided before the poll: counting the polls Prefect answers without the API would make
        # a worker that cannot reach it look healthy. A poll that raised sends nothing.
        pool = self._synced_pool
        flow_runs = await super().get_and_submit_flow_runs()
        if pool is not None:
            environment = os.environ.get(ENV_ENVIRONMENT, "").strip() or None
            get_metrics().worker_heartbeat(pool, environment)
        return flow_runs


# Prefect registers each worker class under ``__dispatch_key__()``, which is its ``type``. Ours
# keep ``type`` (pools, the API and the UI must see ordinary process/kubernetes workers), so they
# override the key: with Prefect's, they would replace ProcessWorker and KubernetesWorker in the
# registry. Prefect has no public way to register under another key;
# tests/deployments/test_prefect_private_uses.py fails if the hook goes away.
class GantryProcessWorker(_HeartbeatMixin, ProcessWorker):
    """Prefect's process worker, sending a heartbeat after each successful poll."""

    @classmethod
    def __dispatch_key__(cls) -> str:
        return "gantry-process"


# prefect_kubernetes ships no type information, so its worker is Any to mypy.
class GantryKubernetesWorker(_HeartbeatMixin, KubernetesWorker):  # type: ignore[misc]
    """Prefect's Kubernetes worker, sending a heartbeat after each successful poll."""

    @classmethod
    def __dispatch_key__(cls) -> str:
        return "gantry-kubernetes"


# Its own type (``gantry-warm``): Prefect registers it under that key, no hook needed.
class GantryWarmWorker(_HeartbeatMixin, WarmWorker):
    """Gantry's warm worker, sending a heartbeat after each successful poll."""


WORKER_CLASSES: dict[str, type[AnyWorker]] = {
    "warm": GantryWarmWorker,
    "process": GantryProcessWorker,
    # mypy sees BaseWorker's abstract run() but not the untyped KubernetesWorker's.
    "kubernetes": GantryKubernetesWorker,  # type: ignore[type-abstract]
}


@dataclass(frozen=True)
class WorkerOptions:
    pool: str
    worker_type: str
    name: str | None = None
    work_queues: list[str] | None = None
    limit: int | None = None
    base_job_template: Path | None = None
    with_healthcheck: bool = False
    warm_size: int = DEFAULT_WARM_SIZE
    preload: tuple[str, ...] = PIPELINE_MODULES
    status_file: Path | None = None


def parse_args(argv: Sequence[str] | None = None) -> WorkerOptions:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.worker",
        description="Start a Prefect worker that sends gantry.worker.heartbeat on each poll.",
    )
    parser.add_argument("--pool", "-p", required=True, help="the work pool to poll")
    parser.add_argument(
        "--type", "-t", required=True, choices=sorted(WORKER_CLASSES), dest="worker_type"
    )
    parser.add_argument("--name", "-n", help="the worker's name (default: a random one)")
    parser.add_argument(
        "--work-queue",
        "-q",
        action="append",
        dest="work_queues",
        help="a work queue to poll (repeatable; default: all of the pool's queues)",
    )
    parser.add_argument("--limit", "-l", type=int, help="most flow runs at a time")
    parser.add_argument(
        "--base-job-template",
        type=Path,
        help="JSON base job template, used when the worker creates the pool",
    )
    parser.add_argument(
        "--with-healthcheck",
        action="store_true",
        help="serve Prefect's worker health check on PREFECT_WORKER_WEBSERVER_HOST/PORT",
    )
    parser.add_argument(
        "--warm-size",
        type=int,
        default=DEFAULT_WARM_SIZE,
        help=f"warm type: interpreters kept warm (default {DEFAULT_WARM_SIZE})",
    )
    parser.add_argument(
        "--preload",
        action="append",
        help="warm type: a module each warm interpreter imports (repeatable; default: the "
        "pipelines)",
    )
    parser.add_argument(
        "--status-file",
        type=Path,
        help="warm type: JSON file kept up to date with the warm interpreters and their memory",
    )
    args = parser.parse_args(argv)
    if args.warm_size < 1:
        parser.error("--warm-size must be at least 1")
    return WorkerOptions(
        pool=args.pool,
        worker_type=args.worker_type,
        name=args.name,
        work_queues=args.work_queues,
        limit=args.limit,
        base_job_template=args.base_job_template,
        with_healthcheck=args.with_healthcheck,
        warm_size=args.warm_size,
        preload=tuple(args.preload) if args.preload else PIPELINE_MODULES,
        status_file=args.status_file,
    )


def build_worker(options: WorkerOptions) -> AnyWorker:
    template = None
    if options.base_job_template is not None:
        template = json.loads(options.base_job_template.read_text())
    common: dict[str, Any] = {
        "name": options.name,
        "work_queues": options.work_queues,
        "limit": options.limit,
        "base_job_template": template,
    }
    if options.worker_type == "warm":
        return GantryWarmWorker(
            options.pool,
            warm_size=options.warm_size,
            preload=options.preload,
            status_file=options.status_file,
            **common,
        )
    return WORKER_CLASSES[options.worker_type](work_pool_name=options.pool, **common)


def _printer(worker: AnyWorker) -> Callable[..., None]:
    def printer(*parts: object) -> None:
        # Prefect's worker logger rather than stdout: a JSON line under Gantry's logging config,
        # and flushed at once, so Stack._worker_polling sees "started" without waiting on a
        # block-buffered stdout.
        get_worker_logger(worker).info(" ".join(str(part) for part in parts))

    return printer


async def serve(worker: AnyWorker, with_healthcheck: bool = False) -> None:
    """Run ``worker`` as ``prefect worker start`` does, until it fails or is told to stop."""
    printer = _printer(worker)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("serve() must run in an asyncio task")
    received: list[signal.Signals] = []

    def stop(signum: signal.Signals) -> None:
        received.append(signum)
        printer(f"Received {signum.name}: stopping worker {worker.name!r}")
        # The next signal gets the default action and ends the process at once, as with
        # Prefect's CLI, for a teardown that hangs.
        for each in STOP_SIGNALS:
            loop.remove_signal_handler(each)
        # Cancelling the task unwinds worker.start(), whose `async with` tears the worker down:
        # it leaves the API cleanly and emits Prefect's worker-stopped event.
        task.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    # A worker that starts has no run in flight: sandboxes of this stack are leftovers.
    for name in await reap_stack_leftovers():
        printer(f"removed leftover sandbox {name}")
    # Crashed runs: steps killed, one retry, GitHub told (deployments/crashes.py).
    crashes = asyncio.create_task(watch_crashes(), name="gantry-crashes")
    try:
        await worker.start(printer=printer, with_healthcheck=with_healthcheck)
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        printer(f"Worker {worker.name!r} stopped!")
    finally:
        crashes.cancel()
        await asyncio.gather(crashes, return_exceptions=True)
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # The Prefect API credential reaches the worker only through its environment: masked in
    # every line the worker logs.
    register_secret(os.environ.get("PREFECT_API_AUTH_STRING"))
    try:
        worker = build_worker(options)
    except (OSError, ValueError) as exc:
        print(f"cannot start the worker: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(worker, options.with_healthcheck))
    return 0


if __name__ == "__main__":
    sys.exit(main())
