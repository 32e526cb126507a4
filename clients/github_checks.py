"""Pure helpers for GitHub check runs: the ``external_id`` Gantry gives them, GitHub's limits.

Gantry reports one check run per pipeline stage. Its ``external_id`` names the run that made it,
``"<pipeline>:<pr number or empty>:<flow run id>"`` (``pr:12:<uuid>``, ``merge::<uuid>``), so a
``check_run`` webhook (``rerequested``, a re-run button) can find the pipeline run to start again
without any state kept by Gantry, and a crash handler can find the check runs a dead run left in
progress. The id names only data (a pipeline, a number, a UUID), never anything to execute.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeVar

# GitHub refuses more than 50 annotations in one request; more are added by further PATCHes.
ANNOTATIONS_PER_REQUEST = 50
# ``output.summary`` and ``output.text`` hold at most this many characters each.
OUTPUT_TEXT_LIMIT = 65_535
_CUT_MARK = "\n\n… (cut to GitHub's length limit)"

_PIPELINE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9-]+$")

T = TypeVar("T")


class CheckExternalId(NamedTuple):
    pipeline: str
    pr_number: int | None
    flow_run_id: str


def check_external_id(pipeline: str, pr_number: int | None, flow_run_id: str) -> str:
    """``"<pipeline>:<pr number or empty>:<flow run id>"``: ``pr:12:<uuid>``, ``merge::<uuid>``."""
    if not _PIPELINE_RE.match(pipeline):
        raise ValueError(f"not a pipeline name: {pipeline!r}")
    if pr_number is not None and pr_number < 1:
        raise ValueError(f"not a pull request number: {pr_number!r}")
    if not _RUN_ID_RE.match(flow_run_id):
        raise ValueError(f"not a flow run id: {flow_run_id!r}")
    return f"{pipeline}:{'' if pr_number is None else pr_number}:{flow_run_id}"


def parse_check_external_id(external_id: str) -> CheckExternalId:
    """The parts of an id made by ``check_external_id``; ValueError for anything else (a check
    run another app created, or a forged webhook)."""
    parts = external_id.split(":")
    if len(parts) != 3:
        raise ValueError("not a Gantry check run id: expected <pipeline>:<pr>:<flow run id>")
    pipeline, number, run_id = parts
    pr_number: int | None = None
    if number:
        if not number.isdigit() or not number.isascii():
            raise ValueError("not a Gantry check run id: the pull request is not a number")
        pr_number = int(number)
    parsed = CheckExternalId(pipeline, pr_number, run_id)
    # Round trip: whatever is accepted here is exactly what check_external_id makes.
    if check_external_id(*parsed) != external_id:
        raise ValueError("not a Gantry check run id")
    return parsed


def chunked(items: Sequence[T], size: int = ANNOTATIONS_PER_REQUEST) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``; nothing for an empty sequence."""
    if size < 1:
        raise ValueError("chunk size must be positive")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cut_output(text: str, limit: int = OUTPUT_TEXT_LIMIT) -> str:
    """``text`` within GitHub's output limit, saying so at its end when it was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(_CUT_MARK)] + _CUT_MARK
