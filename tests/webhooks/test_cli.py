"""`gantry webhooks serve`: clear refusals before starting, and a real served receiver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from core.ports import free_port
from deployments.cli.webhooks import app
from tests.webhooks import payloads

runner = CliRunner()


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GANTRY_HOME", str(tmp_path))
    monkeypatch.setenv("GANTRY_WEBHOOK_SECRET", payloads.SECRET)
    monkeypatch.setenv("GANTRY_WEBHOOK_REPOSITORIES", payloads.SERVED)
    monkeypatch.delenv("GANTRY_WEBHOOK_STORE", raising=False)
    return tmp_path


def test_serve_refuses_a_placeholder_secret_with_a_clear_message(
    environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GANTRY_WEBHOOK_SECRET", "changeme")
    result = runner.invoke(app, ["serve", "--port", str(free_port())])
    assert result.exit_code == 2
    assert "GANTRY_WEBHOOK_SECRET is" in result.output and "placeholder" in result.output


def test_serve_refuses_a_port_taken_by_another_program(environment: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is taken" in result.output


@pytest.fixture
def serving(environment: Path) -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    argv = [sys.executable, "-c", "from deployments.cli.main import main; main()"]
    process = subprocess.Popen(
        [*argv, "webhooks", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"the receiver did not start:\n{output}")
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)


@pytest.mark.timeout(60)
def test_serve_listens_on_loopback_and_records_signed_deliveries(
    serving: str, environment: Path
) -> None:
    body, headers = payloads.signed("push", payloads.push())
    response = httpx.post(f"{serving}/webhooks/github", content=body, headers=headers, timeout=10)
    assert response.status_code == 202
    assert (environment / "webhooks.db").exists()
    assert httpx.get(f"{serving}/readyz", timeout=10).json()["prefect"] == "unreachable"
