"""Loggers for steps: the Prefect run logger inside a run (so lines reach the UI), else ours."""

from __future__ import annotations

import logging
from typing import Any

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

StepLogger = logging.Logger | logging.LoggerAdapter[Any]


def step_logger(stage: str | None = None) -> StepLogger:
    try:
        logger: StepLogger = get_run_logger()
    except MissingContextError:
        logger = logging.getLogger(f"gantry.steps.{stage}" if stage else "gantry.steps")
    return logger
