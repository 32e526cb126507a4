"""The served receiver's bounds, over real sockets: slow headers and slow bodies are cut off
while a normal delivery still gets through, open connections are limited, SIGTERM drains the
request in flight (202 and its row) and refuses new ones, and several replicas on SQLite
refuse to start."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.ports import free_port
from tests.webhooks import payloads
from tests.webhooks.served import ServedReceiver, receiver_settings
from webhooks.settings import SettingsError, load_settings

pytestmark = [pytest.mark.slow, pytest.mark.anyio, pytest.mark.timeout(120)]
URL_PATH = "/webhooks/github"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request_head(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {URL_PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


async def deliver(url: str) -> httpx.Response:
    body, headers = payloads.signed("push", payloads.push())
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await http.post(URL_PATH, content=body, headers=headers)


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[ServedReceiver]:
    settings = receiver_settings(tmp_path).model_copy(
        update={
            "webhook_header_timeout": 1.0,
            "webhook_body_timeout": 1.5,
            "webhook_max_connections": 6,
        }
    )
    with ServedReceiver(settings, dispatch=False) as served:
        yield served


async def test_slow_headers_are_cut_off_while_a_delivery_gets_through(
    bounded: ServedReceiver,
) -> None:
    trickling = connect(bounded.port)
    silent = connect(bounded.port)
    trickling.sendall(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n")
    assert (await deliver(bounded.url)).status_code == 202
    started = time.monotonic()
    # Both cut off near the 1 s deadline; without it they would be held forever.
    assert await asyncio.to_thread(closed_within, trickling, 10) == b""
    assert await asyncio.to_thread(closed_within, silent, 10) == b""
    assert time.monotonic() - started > 0.5


async def test_a_slow_body_is_cut_off_and_nothing_is_recorded(bounded: ServedReceiver) -> None:
    body, headers = payloads.signed("push", payloads.push())
    slow = connect(bounded.port)
    slow.sendall(request_head(bounded.port, body, headers) + body[:100])
    assert (await deliver(bounded.url)).status_code == 202
    answer = await asyncio.to_thread(closed_within, slow, 10)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408")
    assert bounded.store.get(headers["X-GitHub-Delivery"]) is None


async def test_connections_past_the_limit_are_answered_503(bounded: ServedReceiver) -> None:
    held = [connect(bounded.port) for _ in range(6)]
    try:
        await asyncio.sleep(0.2)
        refused = await deliver(bounded.url)
        assert refused.status_code == 503
    finally:
        for sock in held:
            sock.close()
    await asyncio.sleep(0.2)
    assert (await deliver(bounded.url)).status_code == 202


def test_several_replicas_refuse_a_sqlite_store(tmp_path: Path) -> None:
    common = {
        "webhook_secret": payloads.SECRET,
        "webhook_repositories": payloads.SERVED,
        "home": tmp_path,
    }
    with pytest.raises(SettingsError, match=r"GANTRY_WEBHOOK_REPLICAS is 3.*postgresql://"):
        load_settings(**common, webhook_replicas=3)
    with pytest.raises(SettingsError, match="GANTRY_WEBHOOK_REPLICAS"):
        load_settings(**common, webhook_replicas=2, webhook_store=f"sqlite:///{tmp_path}/w.db")
    assert load_settings(**common, webhook_replicas=1).webhook_replicas == 1
    shared = load_settings(**common, webhook_replicas=3, webhook_store="postgresql://db/gantry")
    assert shared.webhook_replicas == 3


def test_the_receiver_process_refuses_to_start_with_replicas_on_sqlite(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GANTRY_WEBHOOK_SECRET": payloads.SECRET,
        "GANTRY_WEBHOOK_REPOSITORIES": payloads.SERVED,
        "GANTRY_HOME": str(tmp_path),
        "GANTRY_WEBHOOK_PORT": str(free_port()),
        "GANTRY_WEBHOOK_REPLICAS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from webhooks.server import serve; serve()"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "GANTRY_WEBHOOK_REPLICAS is 2" in done.stderr
    assert not (tmp_path / "webhooks.db").exists()


def test_sigterm_drains_the_request_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "GANTRY_WEBHOOK_SECRET": payloads.SECRET,
        "GANTRY_WEBHOOK_REPOSITORIES": payloads.SERVED,
        "GANTRY_HOME": str(tmp_path),
        "GANTRY_WEBHOOK_PORT": str(port),
        # Nothing to dispatch to: the drain must not wait for Prefect.
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "from webhooks.server import serve; serve()"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        body, headers = payloads.signed("push", payloads.push())
        in_flight = connect(port)
        # Headers and half the body: the request is being read when SIGTERM comes.
        in_flight.sendall(request_head(port, body, headers) + body[: len(body) // 2])
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{url}{URL_PATH}", content=body, headers=headers, timeout=5)
        in_flight.sendall(body[len(body) // 2 :])
        answer = closed_within(in_flight, 20)
        assert answer is not None and answer.startswith(b"HTTP/1.1 202"), answer
        # uvicorn re-raises the signal once drained: the exit a SIGTERM is expected to give.
        assert process.wait(30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    with sqlite3.connect(tmp_path / "webhooks.db") as db:
        found = db.execute(
            "SELECT status FROM deliveries WHERE id = ?", (headers["X-GitHub-Delivery"],)
        ).fetchall()
    assert found == [("pending",)]
