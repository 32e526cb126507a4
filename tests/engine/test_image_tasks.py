"""The Prefect tasks around the image steps, run in a flow against the test stack's server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import State
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run

from flows.config import Image
from flows.results import StageResult, StageStatus
from flows.steps.images import build_images, push_images

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@flow(name="image-steps-under-test")
async def _build_then_push(checkout: Path, docker_host: str, registry: str) -> dict[str, Any]:
    built_state = await cast(
        Awaitable[State[StageResult]],
        build_images(checkout, [Image(name="api")], "t4sk", docker_host, "acme", return_state=True),
    )
    built = await built_state.aresult(raise_on_failure=False)
    assert isinstance(built, StageResult)
    pushed_state = await cast(
        Awaitable[State[StageResult]],
        push_images(built, registry, docker_host=docker_host, return_state=True),
    )
    pushed = await pushed_state.aresult(raise_on_failure=False)
    return {"built": built, "pushed": pushed, "flow_run_id": str(flow_run.id)}


async def _run_log_lines(flow_run_id: str, wanted: str, timeout: float = 20) -> list[str]:
    await APILogHandler.aflush()
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    async with get_client() as client:
        while time.monotonic() < deadline:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            lines = [log.message for log in logs]
            if wanted in lines:
                break
            await asyncio.sleep(0.5)
    return lines


def test_build_output_reaches_the_run_logs_and_push_returns_digests(
    local_stack: object,
    tmp_path: Path,
    container_engine: str,
    busybox_image: str,
    registry: str,
) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {busybox_image}\nRUN echo streamed-{tmp_path.name}\n"
    )
    outcome = asyncio.run(_build_then_push(tmp_path, container_engine, registry))
    assert outcome["built"].status == StageStatus.PASSED, outcome["built"].detail
    assert outcome["pushed"].status == StageStatus.PASSED, outcome["pushed"].detail
    assert outcome["pushed"].data["images"]["api"]["digest"].startswith("sha256:")
    wanted = f"[api] streamed-{tmp_path.name}"
    assert wanted in asyncio.run(_run_log_lines(outcome["flow_run_id"], wanted))


def test_a_failed_build_task_ends_failed_with_the_instruction_in_its_message(
    local_stack: object, tmp_path: Path, container_engine: str, busybox_image: str
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox_image}\nRUN exit 7\n")

    @flow(name="failing-build-under-test")
    async def failing() -> tuple[bool, str | None]:
        state = await cast(
            Awaitable[State[StageResult]],
            build_images(
                tmp_path, [Image(name="api")], "t5", container_engine, "acme", return_state=True
            ),
        )
        return state.is_failed(), state.message

    failed, message = asyncio.run(failing())
    assert failed
    assert message is not None and "RUN exit 7" in message
