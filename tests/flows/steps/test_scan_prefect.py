"""The scan stage inside a real Prefect flow run, reading its credentials from a saved block."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prefect import flow
from prefect.client.schemas.objects import State
from prefect.testing.utilities import prefect_test_harness
from pydantic import SecretStr

from blocks.snyk import SnykCredentials
from clients.snyk import RetryPolicy
from flows.config import Scan
from flows.results import StageResult, StageStatus
from flows.steps.scan import scan_dependencies

if TYPE_CHECKING:
    from tests.fakes.snyk_api import FakeSnyk

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_retry_after=2.0, max_wait=3.0)


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    # A throwaway Prefect server (its own database) for this module's flow runs and blocks.
    with prefect_test_harness(server_startup_timeout=60):
        yield


@flow(name="scan-under-test")
async def scan_flow(checkout: Path, scan: Scan, fork: bool) -> tuple[str, str, StageResult]:
    """The task run's state name and message, and its result (a returned State would become
    the flow's own final state)."""
    # Prefect's overloads type this call as a State, though an async task's call is awaited.
    call: Any = scan_dependencies(checkout, scan, fork, policy=FAST, return_state=True)
    state = await call
    assert isinstance(state, State)
    result = await state.aresult(raise_on_failure=False)
    assert isinstance(result, StageResult)
    return state.name or "", state.message or "", result


async def test_a_saved_block_is_used_and_a_finding_fails_the_task_run(
    prefect_server: None, snyk_api: FakeSnyk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment's token is wrong: only the saved block's token gets an answer.
    monkeypatch.setenv("SNYK_TOKEN", "snyk-wrong-env-token-42")
    monkeypatch.setenv("GANTRY_SNYK_API_URL", snyk_api.url)
    await SnykCredentials(
        token=SecretStr(snyk_api.token), org_id=snyk_api.org_id, api_url=snyk_api.url
    ).save("gantry-snyk", overwrite=True)
    snyk_api.add_vulnerability("django", "4.2.0", "critical", id="SNYK-PYTHON-DJANGO-9")
    (tmp_path / "requirements.txt").write_text("django==4.2.0\n")

    name, message, result = await scan_flow(tmp_path, Scan(), False)

    assert name == "Failed"
    assert message.startswith("scan: 1 at or above high: SNYK-PYTHON-DJANGO-9")
    assert result.status == StageStatus.FAILED
    assert [r.headers["authorization"] for r in snyk_api.requests] == [f"token {snyk_api.token}"]


async def test_a_fork_run_is_skipped_without_touching_snyk(
    prefect_server: None, snyk_api: FakeSnyk, tmp_path: Path
) -> None:
    (tmp_path / "requirements.txt").write_text("django==4.2.0\n")

    name, message, result = await scan_flow(tmp_path, Scan(), True)

    assert name == "Skipped"
    assert message == "not configured: fork pull requests get no secrets"
    assert result.status == StageStatus.SKIPPED
    assert snyk_api.requests == []
