"""``gantry.worker.heartbeat``: one DogStatsD count per successful poll of the work pool, else none.

Real parts only: the session's Prefect server, the worker started as ``python -m
deployments.worker`` in its own process, and a UDP socket on loopback standing in for the Datadog
agent. The worker-not-polling monitor alerts on silence, so a heartbeat sent while the worker
cannot reach the API would hide exactly the outage it is there to page on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from clients.metrics import Metrics, set_metrics
from core.logconfig import logging_env
from core.ports import free_port
from deployments.prefect_server import PrefectServer
from tests.observability.conftest import Datagram, StatsdListener

PY = sys.executable
PROJECT_DIR = Path(__file__).resolve().parents[2]
HEARTBEAT = "gantry.worker.heartbeat"
ENVIRONMENT = "heartbeat-test"
# Importing Prefect in a new interpreter takes seconds, more on a loaded machine.
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


# --- the metric ---------------------------------------------------------------------------------


def test_heartbeat_is_a_count_tagged_with_pool_and_environment(
    statsd: StatsdListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DD_ENV", raising=False)
    Metrics("127.0.0.1", statsd.port).worker_heartbeat("Gantry-Local", "staging")
    (datagram,) = statsd.receive(1)
    assert datagram == Datagram(HEARTBEAT, "1", "c", ("work_pool:gantry-local", "env:staging"))


def test_heartbeat_without_an_environment_has_only_the_pool_tag(
    statsd: StatsdListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DD_ENV", raising=False)
    Metrics("127.0.0.1", statsd.port).worker_heartbeat("gantry-local", None)
    (datagram,) = statsd.receive(1)
    assert datagram.tags == ("work_pool:gantry-local",)


def test_heartbeat_never_carries_two_env_tags(
    statsd: StatsdListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The DogStatsD library tags every metric with DD_ENV on its own.
    monkeypatch.setenv("DD_ENV", "production")
    Metrics("127.0.0.1", statsd.port).worker_heartbeat("gantry-kubernetes", "production")
    (datagram,) = statsd.receive(1)
    assert sorted(datagram.tags) == ["env:production", "work_pool:gantry-kubernetes"]


# --- the worker in this process -----------------------------------------------------------------


def test_a_worker_that_never_synced_skips_the_api_and_sends_no_heartbeat(
    statsd: StatsdListener,
) -> None:
    from deployments.worker import GantryProcessWorker

    set_metrics(Metrics("127.0.0.1", statsd.port))
    worker = GantryProcessWorker(work_pool_name="never-synced")
    # Not set up, so it has no API client: Prefect's poll must return before asking the API.
    assert asyncio.run(worker.get_and_submit_flow_runs()) == []
    assert statsd.nothing_within(0.5)


@pytest.mark.slow
def test_a_synced_worker_sends_one_heartbeat_per_poll_in_process(
    prefect_server: PrefectServer,
    work_pool: str,
    statsd: StatsdListener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from deployments.worker import GantryProcessWorker

    del prefect_server
    monkeypatch.delenv("DD_ENV", raising=False)
    set_metrics(Metrics("127.0.0.1", statsd.port))

    async def poll_twice() -> None:
        async with GantryProcessWorker(work_pool_name=work_pool) as worker:
            await worker.get_and_submit_flow_runs()
            await worker.get_and_submit_flow_runs()

    asyncio.run(poll_twice())
    datagrams = statsd.receive(2)
    assert {d.tags for d in datagrams} == {(f"work_pool:{work_pool}",)}
    assert statsd.nothing_within(0.5)


# --- Prefect's worker type registry -------------------------------------------------------------


def test_importing_the_worker_leaves_prefects_worker_types_in_place() -> None:
    from prefect.utilities.dispatch import lookup_type
    from prefect.workers.base import BaseWorker
    from prefect.workers.process import ProcessWorker
    from prefect_kubernetes.worker import KubernetesWorker

    from deployments.worker import GantryKubernetesWorker, GantryProcessWorker

    assert lookup_type(BaseWorker, "process") is ProcessWorker
    assert lookup_type(BaseWorker, "kubernetes") is KubernetesWorker
    assert BaseWorker.get_worker_class_from_type("process") is ProcessWorker
    # Ours register under their own keys but are ordinary workers to pools and the API.
    assert lookup_type(BaseWorker, "gantry-process") is GantryProcessWorker
    assert lookup_type(BaseWorker, "gantry-kubernetes") is GantryKubernetesWorker
    assert (GantryProcessWorker.type, GantryKubernetesWorker.type) == ("process", "kubernetes")


def test_a_fresh_import_overrides_no_registered_worker_type() -> None:
    # In this test session the registry may already be settled; a new interpreter shows what
    # `import deployments.worker` does to it, and Prefect warns whenever a key is overridden.
    script = "\n".join(
        [
            "import warnings",
            "with warnings.catch_warnings(record=True) as caught:",
            "    warnings.simplefilter('always')",
            "    import deployments.worker",
            "from prefect.utilities.dispatch import lookup_type",
            "from prefect.workers.base import BaseWorker",
            "from prefect.workers.process import ProcessWorker",
            "from prefect_kubernetes.worker import KubernetesWorker",
            "overridden = [str(w.message) for w in caught if 'registered type' in str(w.message)]",
            "assert not overridden, overridden",
            "assert lookup_type(BaseWorker, 'process') is ProcessWorker",
            "assert lookup_type(BaseWorker, 'kubernetes') is KubernetesWorker",
            "print('registry intact')",
        ]
    )
    result = subprocess.run(
        [PY, "-c", script],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registry intact" in result.stdout


# --- the worker against a real Prefect server -----------------------------------------------------


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"the worker never logged {text!r}:\n{self.output()[-4000:]}")

    def stop(self) -> int | None:
        """SIGTERM, as Kubernetes and `gantry down` send it; SIGKILL to the group if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # Anything it started is in its session; none of it may outlive the test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return None


@contextlib.contextmanager
def running_worker(
    tmp_path: Path,
    api_url: str,
    statsd: StatsdListener,
    pool: str,
    *extra_args: str,
    **extra_env: str,
) -> Iterator[WorkerProcess]:
    env = {
        key: value
        for key, value in os.environ.items()
        # The DogStatsD library turns these into tags of its own; the test names the tags.
        if key not in {"DATADOG_TAGS", "DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_ENTITY_ID"}
    }
    env.update(logging_env())
    env.update(
        {
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "DD_AGENT_HOST": "127.0.0.1",
            "DD_DOGSTATSD_PORT": str(statsd.port),
            "DD_ENV": ENVIRONMENT,
            **extra_env,
        }
    )
    argv = [PY, "-m", "deployments.worker", "--pool", pool, "--type", "process"]
    argv += ["--name", f"{pool}-worker", *extra_args]
    log = tmp_path / f"worker-{pool}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(proc, log)
    try:
        yield worker
    finally:
        worker.stop()


def heartbeats(statsd: StatsdListener, count: int, timeout: float) -> list[str]:
    """Raw heartbeat lines, until ``count`` arrived; fails when they do not in ``timeout``."""
    return statsd.receive_lines(count, timeout, prefix=HEARTBEAT)


def drain(statsd: StatsdListener) -> list[str]:
    lines: list[str] = []
    statsd.sock.setblocking(False)
    try:
        while True:
            try:
                payload = statsd.sock.recv(65535)
            except BlockingIOError:
                return lines
            lines.extend(line for line in payload.decode().split("\n") if line)
    finally:
        statsd.sock.setblocking(True)


def silent_for(statsd: StatsdListener, seconds: float) -> list[str]:
    """Every datagram that arrives within ``seconds`` (the empty list is silence)."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        statsd.sock.settimeout(remaining)
        try:
            payload = statsd.sock.recv(65535)
        except TimeoutError:
            break
        lines.extend(line for line in payload.decode().split("\n") if line)
    return lines


@pytest.fixture
def work_pool(prefect_server: PrefectServer) -> Iterator[str]:
    """A process work pool of its own, so no other worker's polls mix in."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    del prefect_server
    name = f"heartbeat-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with get_client() as client:
            await client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                )
            )

    async def delete() -> None:
        async with get_client() as client:
            await client.delete_work_pool(name)

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(delete())


@pytest.mark.slow
def test_a_polling_worker_sends_one_heartbeat_per_poll_tagged_with_its_pool(
    prefect_server: PrefectServer, work_pool: str, statsd: StatsdListener, tmp_path: Path
) -> None:
    api_url = prefect_server.settings.prefect_api_url
    port = free_port()
    with running_worker(
        tmp_path,
        api_url,
        statsd,
        work_pool,
        "--with-healthcheck",  # as Compose starts it
        PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
        PREFECT_WORKER_WEBSERVER_PORT=str(port),
    ) as worker:
        worker.wait_for("started", timeout=STARTUP_TIMEOUT)
        lines = heartbeats(statsd, 2, timeout=30)
        assert set(lines) == {f"{HEARTBEAT}:1|c|#work_pool:{work_pool},env:{ENVIRONMENT}"}
        assert worker.proc.poll() is None
        # Prefect's own health check answers too: Compose probes it.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200

        assert worker.stop() == 0, worker.output()[-4000:]
        assert "stopped" in worker.output()


@pytest.mark.slow
def test_a_worker_that_cannot_reach_the_api_sends_no_heartbeat(
    statsd: StatsdListener, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api"
    with running_worker(
        tmp_path, closed, statsd, "unreachable", PREFECT_LOGGING_LEVEL="DEBUG"
    ) as worker:
        worker.wait_for("started", timeout=STARTUP_TIMEOUT)
        polls_before = worker.output().count("skipping flow run submission")
        got = silent_for(statsd, 6)
        polls = worker.output().count("skipping flow run submission") - polls_before
        assert got == []
        # Silence counts only if the worker was alive and polling all along.
        assert worker.proc.poll() is None
        assert polls >= 3, worker.output()[-4000:]


def failed_polls(log: str) -> int:
    # Prefect's service loop logs each poll that raised (at DEBUG) with the poll's name.
    return sum(
        1
        for line in log.splitlines()
        if "get_and_submit_flow_runs" in line and "failed with" in line
    )


class LoopbackRelay:
    """A TCP relay on 127.0.0.1 in front of the Prefect server; ``cut()`` is a network outage."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._cut = threading.Event()
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._cut.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout=5)


@pytest.mark.slow
def test_heartbeats_stop_when_the_api_goes_away(
    prefect_server: PrefectServer, work_pool: str, statsd: StatsdListener, tmp_path: Path
) -> None:
    relay = LoopbackRelay(prefect_server.settings.prefect_port)
    try:
        # No client retries, so every poll after the cut fails within its interval instead of
        # retrying for a minute, and the log shows each attempt.
        with running_worker(
            tmp_path,
            f"http://127.0.0.1:{relay.port}/api",
            statsd,
            work_pool,
            PREFECT_CLIENT_MAX_RETRIES="0",
            PREFECT_LOGGING_LEVEL="DEBUG",
        ) as worker:
            worker.wait_for("started", timeout=STARTUP_TIMEOUT)
            heartbeats(statsd, 2, timeout=30)
            relay.cut()
            # A poll that finished just before the cut may still be on its way.
            time.sleep(1)
            drain(statsd)
            failed_before = failed_polls(worker.output())
            got = silent_for(statsd, 8)
            failed = failed_polls(worker.output()) - failed_before
            assert got == []
            # Silence counts only because the worker kept polling, and each poll raised.
            assert worker.proc.poll() is None
            assert failed >= 2, worker.output()[-4000:]
    finally:
        relay.cut()
