"""The scan stage end to end against a real local Snyk stand-in: verdicts, skips and failures."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clients.snyk import RetryPolicy
from flows.config import Scan
from flows.results import StageResult, StageStatus
from flows.steps.scan import findings_table, scan_dependencies

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

    from tests.fakes.snyk_api import FakeSnyk

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_cap=0.02, max_retry_after=2.0, max_wait=3.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_snyk_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The scan reads credentials from the environment when no Prefect API is configured.
    for name in ("SNYK_TOKEN", "SNYK_ORG_ID", "GANTRY_SNYK_API_URL", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def snyk_env(snyk_api: FakeSnyk, monkeypatch: pytest.MonkeyPatch) -> FakeSnyk:
    monkeypatch.setenv("SNYK_TOKEN", snyk_api.token)
    monkeypatch.setenv("SNYK_ORG_ID", snyk_api.org_id)
    monkeypatch.setenv("GANTRY_SNYK_API_URL", snyk_api.url)
    return snyk_api


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def run_scan(
    checkout: Path, scan: Scan | None = None, fork: bool = False
) -> tuple[State[StageResult], StageResult]:
    state = await scan_dependencies.fn(checkout, scan or Scan(), fork, policy=FAST)
    result = await state.aresult(raise_on_failure=False)
    assert isinstance(result, StageResult)
    assert result.name == "scan"
    return state, result


async def test_a_finding_at_fail_on_fails_the_stage_and_names_it(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    snyk_env.add_vulnerability("django", "4.2.0", "high", id="SNYK-PYTHON-DJANGO-1")
    snyk_env.add_vulnerability("jinja2", "3.1.2", "low", id="SNYK-PYTHON-JINJA2-2")
    write(tmp_path, "requirements.txt", "django==4.2.0\njinja2==3.1.2\n")

    state, result = await run_scan(tmp_path, Scan(fail_on="high"))

    assert state.is_failed()
    assert result.status == StageStatus.FAILED
    assert "SNYK-PYTHON-DJANGO-1 (high) in django@4.2.0" in result.detail
    assert "JINJA2" not in result.detail
    assert result.data["counts"] == {"low": 1, "medium": 0, "high": 1, "critical": 0}
    assert [f["id"] for f in result.data["findings"]] == [
        "SNYK-PYTHON-DJANGO-1",
        "SNYK-PYTHON-JINJA2-2",
    ]


async def test_findings_below_fail_on_pass_with_findings_and_counts(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    snyk_env.add_vulnerability("django", "4.2.0", "high", id="SNYK-PYTHON-DJANGO-1")
    write(tmp_path, "services/api/requirements-dev.txt", "django==4.2.0 --hash=sha256:abc\n")

    state, result = await run_scan(tmp_path, Scan(fail_on="critical"))

    assert state.is_completed()
    assert result.status == StageStatus.PASSED
    assert result.data["counts"]["high"] == 1
    [finding] = result.data["findings"]
    assert finding["manifest"] == "services/api/requirements-dev.txt"
    assert finding["package"] == "django"
    [request] = snyk_env.requests
    assert request.json["files"]["target"]["contents"] == "django==4.2.0\n"
    [row] = findings_table(result.data["findings"])
    assert row["package"] == "django@4.2.0"
    assert row["severity"] == "high"


async def test_a_clean_scan_passes_with_no_findings(snyk_env: FakeSnyk, tmp_path: Path) -> None:
    write(tmp_path, "requirements.txt", "requests==2.32.3\n")
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.PASSED
    assert result.data["findings"] == []
    assert sum(result.data["counts"].values()) == 0


async def test_lock_file_pins_are_asked_about_one_by_one_over_rest(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    snyk_env.add_vulnerability("urllib3", "1.26.0", "critical", fixed_in=["1.26.18"])
    write(tmp_path, "pyproject.toml", '[project]\nname = "app"\ndependencies = ["urllib3"]\n')
    write(
        tmp_path,
        "uv.lock",
        "version = 1\n\n"
        '[[package]]\nname = "app"\nversion = "0.1.0"\nsource = { editable = "." }\n\n'
        '[[package]]\nname = "urllib3"\nversion = "1.26.0"\n'
        'source = { registry = "https://pypi.org/simple" }\n\n'
        '[[package]]\nname = "idna"\nversion = "3.7"\n'
        'source = { registry = "https://pypi.org/simple" }\n',
    )

    _, result = await run_scan(tmp_path)

    assert result.status == StageStatus.FAILED
    assert "urllib3@1.26.0" in result.detail
    assert result.data["findings"][0]["fixed_in"] == ["1.26.18"]
    paths = sorted(r.path for r in snyk_env.requests)
    assert paths == [
        f"/rest/orgs/{snyk_env.org_id}/packages/pkg:pypi/idna@3.7/issues",
        f"/rest/orgs/{snyk_env.org_id}/packages/pkg:pypi/urllib3@1.26.0/issues",
    ]  # the pyproject is covered by its lock; the editable project itself is not a package


async def test_pyproject_without_a_lock_sends_its_dependencies(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "pyproject.toml",
        '[project]\nname = "app"\ndependencies = ["flask==3.0.0", "httpx>=0.27"]\n',
    )
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.PASSED
    [request] = snyk_env.requests
    assert request.json["files"]["target"]["contents"] == "flask==3.0.0\nhttpx>=0.27\n"


async def test_no_token_is_skipped_as_not_configured_never_passed(
    snyk_api: FakeSnyk, tmp_path: Path
) -> None:
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    state, result = await run_scan(tmp_path)
    assert result.status == StageStatus.SKIPPED
    assert result.detail == "not configured: no Snyk token"
    assert state.name == "Skipped"
    assert snyk_api.requests == []


async def test_fork_pull_requests_are_skipped_without_reading_secrets(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    _, result = await run_scan(tmp_path, fork=True)
    assert result.status == StageStatus.SKIPPED
    assert result.detail == "not configured: fork pull requests get no secrets"
    assert snyk_env.requests == []


async def test_no_manifests_is_skipped(snyk_env: FakeSnyk, tmp_path: Path) -> None:
    write(tmp_path, ".venv/lib/requirements.txt", "django==4.2.0\n")
    write(tmp_path, "node_modules/x/requirements.txt", "django==4.2.0\n")
    write(tmp_path, "README.md", "hello\n")
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.SKIPPED
    assert result.detail == "no dependency manifests found"
    assert snyk_env.requests == []


async def test_configured_globs_choose_the_manifests(snyk_env: FakeSnyk, tmp_path: Path) -> None:
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    write(tmp_path, "deps/prod.txt", "flask==3.0.0\n")
    _, result = await run_scan(tmp_path, Scan(manifests=["deps/*.txt"]))
    assert result.data["manifests"] == ["deps/prod.txt"]
    [request] = snyk_env.requests
    assert request.json["files"]["target"]["contents"] == "flask==3.0.0\n"


async def test_snyk_down_fails_the_stage_with_a_clear_message(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    snyk_env.fail_next(10, "server_error")
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    state, result = await run_scan(tmp_path)
    assert state.is_failed()
    assert result.detail.startswith(
        "Snyk scan failed: POST /v1/test/pip: HTTP 500 after 3 attempts"
    )


async def test_unreachable_snyk_fails_the_stage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SNYK_TOKEN", "snyk-unreachable-token-1")
    monkeypatch.setenv("GANTRY_SNYK_API_URL", f"http://127.0.0.1:{port}")
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.FAILED
    assert "ConnectError after 3 attempts" in result.detail


async def test_rate_limited_then_answered_scans_normally(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    snyk_env.add_vulnerability("django", "4.2.0", "medium")
    snyk_env.fail_next(1, "rate_limit", retry_after="0.1")
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.PASSED
    assert result.data["counts"]["medium"] == 1
    assert len(snyk_env.requests) == 2


async def test_the_token_never_reaches_logs_or_results(
    snyk_env: FakeSnyk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    snyk_env.fail_next(1, "rate_limit", retry_after="0")
    snyk_env.fail_next(1, "server_error")
    snyk_env.fail_next(1, "unauthorised")
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.FAILED
    assert "HTTP 401: Not authorised" in result.detail
    assert any("scan" in r.getMessage() for r in caplog.records)
    assert snyk_env.token not in caplog.text
    assert snyk_env.token not in result.model_dump_json()


async def test_an_unparsable_lock_file_fails_with_its_name(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    write(tmp_path, "poetry.lock", "[[package]\nname = ")
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.FAILED
    assert result.detail.startswith("poetry.lock: not valid TOML")


async def test_a_scan_longer_than_its_timeout_fails(snyk_env: FakeSnyk, tmp_path: Path) -> None:
    snyk_env.fail_next(1, "slow", delay=10)
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    _, result = await run_scan(tmp_path, Scan(timeout=0.3))
    assert result.status == StageStatus.FAILED
    assert result.detail.startswith("Snyk did not answer within the scan timeout")
    # Ended before Snyk's answer could have come: the timeout, not the answer, ended it.
    assert result.seconds < 10


async def test_manifests_outside_the_checkout_are_never_read(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    checkout = tmp_path / "checkout"
    outside = write(tmp_path, "secret/requirements.txt", "private-pkg==1.0\n")
    checkout.mkdir()
    (checkout / "requirements.txt").symlink_to(outside)
    _, result = await run_scan(checkout, Scan(manifests=["requirements.txt", "../secret/*.txt"]))
    assert result.status == StageStatus.SKIPPED
    assert result.detail == "no dependency manifests found"
    assert snyk_env.requests == []


async def test_credentials_in_requirement_options_are_not_sent(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "requirements.txt",
        "--index-url https://user:hunter2secret@pypi.internal/simple\n"
        "-r requirements-base.txt\n"
        "-e .\n"
        "private @ git+https://user:hunter2secret@git.internal/private.git\n"
        "flask==3.0.0  # web\n",
    )
    await run_scan(tmp_path)
    [request] = snyk_env.requests
    assert request.json["files"]["target"]["contents"] == "flask==3.0.0\n"


async def test_a_configured_file_of_unknown_kind_fails_instead_of_passing_untested(
    snyk_env: FakeSnyk, tmp_path: Path
) -> None:
    write(tmp_path, "package.json", "{}\n")
    _, result = await run_scan(tmp_path, Scan(manifests=["package.json"]))
    assert result.status == StageStatus.FAILED
    assert result.detail.startswith("package.json: not a manifest the scan understands")
    assert snyk_env.requests == []


async def test_a_rejected_token_fails_with_a_hint(snyk_env: FakeSnyk, tmp_path: Path) -> None:
    snyk_env.fail_next(1, "unauthorised")
    write(tmp_path, "requirements.txt", "django==4.2.0\n")
    _, result = await run_scan(tmp_path)
    assert result.status == StageStatus.FAILED
    assert result.detail.endswith(
        "(check the token and org id in the gantry-snyk block or SNYK_TOKEN)"
    )


async def test_a_failing_pin_stops_the_other_lookups_and_leaves_nothing_running(
    snyk_env: FakeSnyk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pins = "".join(
        f'[[package]]\nname = "pkg{n}"\nversion = "1.0"\n'
        'source = { registry = "https://pypi.org/simple" }\n\n'
        for n in range(12)
    )
    write(tmp_path, "uv.lock", "version = 1\n\n" + pins)
    snyk_env.fail_next(1, "unauthorised", path_contains="/issues")
    snyk_env.fail_next(3, "slow", delay=0.3, path_contains="/issues")

    _, result = await run_scan(tmp_path)

    assert result.status == StageStatus.FAILED
    assert "HTTP 401" in result.detail
    # The lookups still in flight were cancelled with the stage, not left to fail on their own.
    leftovers = [t for t in asyncio.all_tasks() if "_scan_manifest" in repr(t.get_coro())]
    assert leftovers == []
    await asyncio.sleep(0.5)
    gc.collect()
    assert "never retrieved" not in caplog.text
    assert len(snyk_env.requests_to("/issues")) <= 4
