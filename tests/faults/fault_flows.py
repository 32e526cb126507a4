"""Flows a real process worker runs in the fault suite: the PR pipeline's name and parameters
(what the receiver dispatches) and a run held in flight until the test opens its gate.

Each execution appends a line to the ledger named by ``GANTRY_FAULT_LEDGER`` (the worker's
environment reaches its flow runs), so a test counts executions, not only flow runs created.
Only Prefect and the standard library are imported: the worker loads this file by path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

LEDGER = "GANTRY_FAULT_LEDGER"
GATE_TIMEOUT = 300.0


def _record(line: str) -> None:
    with Path(os.environ[LEDGER]).open("a") as ledger:
        ledger.write(f"{line} {flow_run.get_id()}\n")


@flow(name="pr-pipeline")
def pr_pipeline(
    repository: str | None,
    sha: str,
    pr_number: int | None = None,
    head_ref: str | None = None,
    fork: bool = False,
    repository_name: str | None = None,
    repository_id: int | None = None,
    received_at: str | None = None,
) -> None:
    del repository, sha, head_ref, fork, repository_name, repository_id, received_at
    _record(f"pr:{pr_number}")


@flow(name="fault-held")
def held(gate: str) -> None:
    """Runs until the file ``gate`` exists (bounded: a test that forgets it fails the run)."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate} was never opened")
        time.sleep(0.2)
    _record("held")
