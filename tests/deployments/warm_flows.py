"""Tiny flows the warm worker's tests deploy (entrypoints ``tests.deployments.warm_flows.*``).

Each writes what it saw to the JSON file it is given, so the test reads it from outside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow

# Set by a run; a later run in the same interpreter would see it.
LEFT_BY_A_RUN: str | None = None
LEAK_VARIABLE = "GANTRY_WARM_TEST_LEAK"


def _write(report: str, seen: dict[str, object]) -> None:
    Path(report).write_text(json.dumps(seen))


@flow(name="warm-observe")
def observe(report: str, token: str) -> None:
    """Report the globals, environment and folder it found, then leave its own behind."""
    global LEFT_BY_A_RUN
    _write(
        report,
        {
            "pid": os.getpid(),
            "global": LEFT_BY_A_RUN,
            "env": os.environ.get(LEAK_VARIABLE),
            "cwd": str(Path.cwd()),
        },
    )
    LEFT_BY_A_RUN = token
    os.environ[LEAK_VARIABLE] = token
    Path("left-by-a-run").write_text(token)


@flow(name="warm-fail")
def fail() -> None:
    raise RuntimeError("this flow fails on purpose")


@flow(name="warm-sleep")
def sleep(report: str) -> None:
    """Start a child process (in the run's process group), report both pids, wait."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    _write(report, {"pid": os.getpid(), "child": child.pid})
    time.sleep(600)
