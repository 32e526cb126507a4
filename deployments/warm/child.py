"""A warm interpreter: imports Prefect and the flows, then waits for one flow run.

Started by the warm worker as ``python -m deployments.warm.child --ready-fd N MODULE...``
in its own process group. It imports Prefect's engine and each MODULE, writes one line
(``ready``) to the file descriptor N and reads one job, a JSON line on stdin:
``{"flow_run_id": ..., "env": {...}, "cwd": ...}``. It takes that environment and working
directory and then does what ``python -m prefect.engine`` does. One job per interpreter: the
process exits with the flow run, so no two runs share a module global, an environment
variable or a working directory. End of input before a job means "retire": it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from types import GeneratorType
from typing import Any, cast
from uuid import UUID

READY = b"ready\n"


def preload(modules: Sequence[str]) -> None:
    """Import Prefect's engine and ``modules``; a module that fails is reported, not fatal
    (its flow run fails on its own and says why)."""
    import prefect.engine
    import prefect.flow_engine

    del prefect.engine, prefect.flow_engine
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the flow run that needs it reports its own error
            print(f"warm interpreter: cannot preload {name}", file=sys.stderr)
            traceback.print_exc()


def read_job() -> dict[str, Any] | None:
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return None
    job: dict[str, Any] = json.loads(line)
    return job


def take_job(job: dict[str, Any]) -> UUID:
    """The job's environment and folder become this process's; its stdin is closed so that
    nothing the flow starts inherits the worker's pipe."""
    env = {str(key): str(value) for key, value in dict(job["env"]).items()}
    os.environ.clear()
    os.environ.update(env)
    os.chdir(str(job["cwd"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return UUID(str(job["flow_run_id"]))


def drive(result: object) -> None:
    """Finish what ``run_flow`` returned for async or generator flows, as Prefect's engine
    entry point does (its helper for this is private)."""
    if inspect.iscoroutine(result):
        asyncio.run(result)
    elif inspect.isasyncgen(result):
        agen = result

        async def consume() -> None:
            async for _ in agen:
                pass

        asyncio.run(consume())
    elif isinstance(result, GeneratorType):
        for _ in result:
            pass


def run_flow_run(flow_run_id: UUID) -> None:
    """``python -m prefect.engine``'s main block, through Prefect's public names.

    Two steps of that block are left out because Prefect offers them only in private modules:
    ``prefect._internal.control_listener.configure_from_env`` (the runner's control channel,
    which this worker does not open; cancellation kills the process group instead) and
    ``prefect._internal.metrics.RunMetrics`` (per-run resource metrics).
    """
    from prefect.engine import handle_engine_signals
    from prefect.flow_engine import load_flow, load_flow_run, run_flow
    from prefect.logging.loggers import flow_run_logger

    with handle_engine_signals(flow_run_id):
        flow_run = load_flow_run(flow_run_id=flow_run_id)
        run_logger = flow_run_logger(flow_run=flow_run)
        try:
            flow = load_flow(flow_run)
        except Exception:
            run_logger.error(
                "Unexpected exception encountered when trying to load flow", exc_info=True
            )
            raise
        # Prefect's engine passes its run logger (an adapter) here too.
        error_logger = cast(logging.Logger, run_logger)
        drive(run_flow(flow, flow_run=flow_run, error_logger=error_logger))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.warm.child")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("modules", nargs="*")
    args = parser.parse_args(argv)
    preload(args.modules)
    os.write(args.ready_fd, READY)
    os.close(args.ready_fd)
    job = read_job()
    if job is None:
        return 0
    run_flow_run(take_job(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
