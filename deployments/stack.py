"""The local stack: Prefect server, process work pool and worker, deployments from prefect.yaml."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.ports import StackError, port_is_free, wait_until
from core.settings import StackSettings
from core.statefiles import ensure_state_dir, secret_file, secure_state_folder
from deployments.engine import ContainerEngine
from deployments.engine_registry import Registry
from deployments.prefect_server import PrefectServer, base_env, venv_bin
from deployments.processes import ManagedProcess

PROJECT_DIR = Path(__file__).resolve().parent.parent
Progress = Callable[[str], None]
# The containers of the local environments carry this label (flows/deploy/local.py).
ENVIRONMENT_LABEL = "dev.gantry.environment"
# Each service deployed locally takes the next (staging, production) pair of ports.
TARGET_SLOTS = 32
# How long `gantry down` waits for cancelled runs to end before it ends them itself.
CANCEL_TIMEOUT = 60.0


@dataclass
class DownReport:
    """What `gantry down` stopped, removed and cancelled."""

    stopped: list[str] = field(default_factory=list)
    cancelled_runs: list[str] = field(default_factory=list)
    sandboxes_removed: list[str] = field(default_factory=list)
    environments_stopped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "stopped": self.stopped,
            "cancelled_runs": self.cancelled_runs,
            "sandboxes_removed": self.sandboxes_removed,
            "environments_stopped": self.environments_stopped,
        }

    def lines(self) -> list[str]:
        lines = ["stopped: " + (", ".join(self.stopped) or "nothing was running")]
        for label, items in (
            ("cancelled runs", self.cancelled_runs),
            ("removed sandboxes", self.sandboxes_removed),
            ("stopped environments", self.environments_stopped),
        ):
            if items:
                lines.append(f"{label}: " + ", ".join(items))
        return lines


@dataclass(frozen=True)
class PartStatus:
    name: str
    url: str
    up: bool
    detail: str = ""


# GANTRY_WORKER_TYPE: "warm" (Gantry's warm worker, the default) or "process" (Prefect's).
WORKER_TYPES = ("warm", "process")


def worker_type() -> str:
    chosen = os.environ.get("GANTRY_WORKER_TYPE", "").strip() or "warm"
    if chosen not in WORKER_TYPES:
        raise StackError(f"GANTRY_WORKER_TYPE must be one of {', '.join(WORKER_TYPES)}")
    return chosen


def _quiet(message: str) -> None:
    del message


def _log_warning(message: str) -> None:
    logging.getLogger("gantry.stack").warning(message)


def worker_env(settings: StackSettings) -> dict[str, str]:
    """The worker's environment; flow runs inherit it, so it names our state folder and tools."""
    env = base_env(settings)
    env["GANTRY_HOME"] = str(settings.state_dir)
    env["GANTRY_PROJECT_DIR"] = str(PROJECT_DIR)
    env["GANTRY_WORK_POOL"] = settings.work_pool
    env.setdefault("GANTRY_ALLOW_FILE_REPOSITORIES", "1")  # `gantry run --repo PATH`, the demo
    for key in ("prefect_port", "webhook_port", "registry_port", "staging_port", "production_port"):
        env[f"GANTRY_{key.upper()}"] = str(getattr(settings, key))
    # Steps resolve `python`, `ruff`, `pytest` ... from the environment Gantry is installed in.
    bin_dir = str(Path(venv_bin("prefect")).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", os.defpath)])
    return env


@contextlib.contextmanager
def prefect_client_settings(settings: StackSettings) -> Iterator[None]:
    """Prefect clients made inside talk to this stack's server, with its credential."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    # Prefect reads its settings once per process: change them through its own context,
    # or the client would talk to whatever server this process was started for.
    updates = {
        PREFECT_API_URL: settings.prefect_api_url,
        PREFECT_API_AUTH_STRING: settings.api_auth_string(),
    }
    with temporary_settings(updates=updates):
        yield


class Stack:
    """Start, inspect and stop the local stack of one state folder."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.server = PrefectServer(self.settings)
        run_dir = self.settings.state_dir / "run"
        # Relayed as JSON lines: anything a library prints rather than logs is wrapped too.
        self.worker = ManagedProcess("worker", run_dir, json_logs=True)
        self.receiver = ManagedProcess("webhooks", run_dir, json_logs=True)
        # The receiver only records deliveries; this process turns them into flow runs.
        self.dispatcher = ManagedProcess("webhook-dispatcher", run_dir, json_logs=True)
        self.registry = Registry(
            self.settings.state_dir / "registry", self.settings.registry_port, self.settings.host
        )
        self.engine = ContainerEngine(
            self.settings.state_dir / "podman", insecure_registries=[self.registry.address]
        )

    # -- work pool and deployments -------------------------------------------------------
    async def _ensure_work_pool(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectNotFound
        from prefect.workers.base import BaseWorker
        from prefect.workers.process import ProcessWorker

        from deployments.warm.worker import WarmWorker

        worker: type[BaseWorker[Any, Any, Any]] = ProcessWorker
        if worker_type() == "warm":
            worker = WarmWorker
        async with get_client() as client:
            try:
                pool = await client.read_work_pool(self.settings.work_pool)
            except ObjectNotFound:
                pool = None
            if pool is not None and pool.type != worker.type:
                # A pool's type cannot change: GANTRY_WORKER_TYPE changed since it was made.
                # `prefect deploy --all` (next in `up`) attaches the deployments again.
                await client.delete_work_pool(self.settings.work_pool)
                pool = None
            if pool is None:
                await client.create_work_pool(
                    WorkPoolCreate(
                        name=self.settings.work_pool,
                        type=worker.type,
                        base_job_template=worker.get_default_base_job_template(),
                        description=f"Gantry's local work pool ({worker.type} worker)",
                    )
                )

    def ensure_work_pool(self) -> None:
        with prefect_client_settings(self.settings):
            asyncio.run(self._ensure_work_pool())

    def apply_deployments(self) -> None:
        """`prefect deploy --all` over prefect.yaml: Prefect's own way of reading it."""
        env = worker_env(self.settings)
        result = subprocess.run(
            [venv_bin("prefect"), "--no-prompt", "deploy", "--all"],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-2000:]
            raise StackError(f"applying prefect.yaml failed:\n{output}")

    def apply_notifications(self) -> str:
        """Chat notifications (deployments/notifications.py), on with GANTRY_SLACK_WEBHOOK_URL;
        what was done, in a line."""
        from deployments.notifications import apply_notifications_from_env

        try:
            with prefect_client_settings(self.settings):
                return asyncio.run(apply_notifications_from_env()).summary()
        except ValueError as exc:  # names the variable, never its value
            raise StackError(str(exc)) from None

    # -- lifecycle -------------------------------------------------------------------------
    def _check_ports(self) -> None:
        """Refuse before starting anything: a half-started stack is worse than none."""
        s = self.settings
        parts = [
            ("registry", s.registry_port, self.registry.process.running(), "GANTRY_REGISTRY_PORT"),
            (
                "Prefect server",
                s.prefect_port,
                self.server.process.running(),
                "GANTRY_PREFECT_PORT",
            ),
            ("webhook receiver", s.webhook_port, self.receiver.running(), "GANTRY_WEBHOOK_PORT"),
        ]
        for name, port, ours, variable in parts:
            if not ours and not port_is_free(s.host, port):
                raise StackError(
                    f"port {port} on {s.host} (for the {name}) is taken by another program; "
                    f"stop it or set {variable} to a free port"
                )

    def up(self, progress: Progress = _quiet, warn: Progress = _log_warning) -> list[PartStatus]:
        """Start what is not running; ``warn`` hears what was fixed in the state folder."""
        self.secure_state(warn)
        self._check_ports()
        progress("starting the container registry")
        self.registry.start()
        if not self.engine.process.running():
            # Before our engine starts: a state folder removed and made anew shares the runtime
            # folder of the engine it held, whose containers may still run.
            for removed in self.engine.reap_leftovers(self.environment_ports()):
                progress(f"removed {removed}")
        progress("starting the container engine (Podman's Docker API)")
        self.engine.start()
        self._restart_environments(progress)
        progress("starting the Prefect server")
        self.server.start()
        progress("creating the work pool")
        self.ensure_work_pool()
        progress("applying deployments from prefect.yaml")
        self.apply_deployments()
        progress(self.apply_notifications())
        if not self.worker.running():
            # With no worker, no run of this stack is in flight: what sandboxes it still has
            # were left by a crashed worker, and are removed before a new one starts.
            # Imported here: it loads Prefect, which `gantry status` must not pay for.
            from flows.steps.sandbox.select import reap_stack_leftovers

            reaped = asyncio.run(reap_stack_leftovers(self.settings))
            if reaped:
                progress(f"removed {len(reaped)} leftover sandboxes: {', '.join(reaped)}")
            progress("starting the worker")
            # Prefect's worker plus the gantry.worker.heartbeat metric (deployments/worker.py).
            argv = [
                sys.executable,
                "-m",
                "deployments.worker",
                "--pool",
                self.settings.work_pool,
                "--type",
                worker_type(),
                "--name",
                f"{self.settings.work_pool}-worker",
                # Bounded: a worker that submits a whole backlog at once overloads the Prefect
                # server, whose refusals then crash runs (tests/faults/test_backlog.py).
                "--limit",
                str(self.settings.worker_limit),
            ]
            if worker_type() == "warm":
                # Warm interpreters (deployments/warm/): `gantry status` shows this file.
                argv += ["--status-file", str(self.warm_status_file)]
            self.worker.start(argv, worker_env(self.settings), cwd=PROJECT_DIR)
            if not wait_until(self._worker_polling, 60, 0.5):
                raise StackError(f"the worker did not start:\n{self.worker.log_tail()}")
        if not self.receiver.running():
            progress("starting the webhook receiver")
            self._start_receiver()
        if not self.dispatcher.running():
            progress("starting the webhook dispatcher")
            self._start_dispatcher()
        return self.status()

    def secure_state(self, warn: Progress = _log_warning) -> None:
        """The state folder 0700 and its secret files 0600, the stack's secrets created.

        What Gantry created is fixed and reported to ``warn``; a secret file others can read
        that cannot be fixed raises SecretFileError (a StackError) before anything starts.
        """
        ensure_state_dir(self.settings.state_dir)
        self.settings.api_auth_string()
        self.webhook_secret()
        for warning in secure_state_folder(self.settings.state_dir):
            warn(warning)

    def webhook_secret(self) -> str:
        """GANTRY_WEBHOOK_SECRET, or one generated once and kept (0600) in the state folder."""
        given = os.environ.get("GANTRY_WEBHOOK_SECRET")
        if given:
            return given
        path = self.settings.state_dir / "webhook-secret"
        return secret_file(path, lambda: secrets.token_hex(32))

    def _start_receiver(self) -> None:
        if not port_is_free(self.settings.host, self.settings.webhook_port):
            raise StackError(
                f"port {self.settings.webhook_port} on {self.settings.host} is taken by another "
                "program; stop it or set GANTRY_WEBHOOK_PORT to a free port"
            )
        argv = [venv_bin("gantry"), "webhooks", "serve"]
        self.receiver.start(argv, self.receiver_env(), cwd=PROJECT_DIR)
        if not wait_until(self._receiver_up, 60, 0.3):
            raise StackError(f"the webhook receiver did not start:\n{self.receiver.log_tail()}")

    def receiver_env(self) -> dict[str, str]:
        """The webhook receiver's environment: the worker's, the webhook secret, what it serves."""
        env = worker_env(self.settings)
        env["GANTRY_WEBHOOK_SECRET"] = self.webhook_secret()
        env.setdefault("GANTRY_WEBHOOK_REPOSITORIES", "*")  # loopback only; see README
        # Dispatching is the dispatcher process's: its CPU never delays the receiver's answers.
        env["GANTRY_WEBHOOK_DISPATCHER"] = "process"
        return env

    def _start_dispatcher(self) -> None:
        # No webhook secret: the dispatcher reads the store and talks to Prefect, nothing more.
        env = worker_env(self.settings)
        env.pop("GANTRY_WEBHOOK_SECRET", None)
        argv = [sys.executable, "-m", "webhooks.dispatch_process"]
        self.dispatcher.start(argv, env, cwd=PROJECT_DIR)
        if not wait_until(self._dispatcher_started, 60, 0.2):
            raise StackError(f"the webhook dispatcher did not start:\n{self.dispatcher.log_tail()}")

    def _dispatcher_started(self) -> bool:
        if not self.dispatcher.running():
            return False
        return "dispatcher started" in self.dispatcher.log_tail(50)

    def _receiver_up(self) -> bool:
        try:
            url = f"http://{self.settings.host}:{self.settings.webhook_port}/healthz"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def environment_ports(self) -> set[int]:
        """The loopback ports this stack's environments serve on (every service's pair)."""
        s = self.settings
        return {
            port + 2 * slot
            for port in (s.staging_port, s.production_port)
            for slot in range(TARGET_SLOTS)
        }

    def _stopped_environments_file(self) -> Path:
        return self.settings.state_dir / "run" / "stopped-environments.json"

    def _stop_environments(self) -> list[str]:
        """Stop the environments' running containers through Podman (their cleanup takes their
        port forwarding down) and remember them, so that `gantry up` serves them again."""
        running = self.engine.containers(ENVIRONMENT_LABEL)
        self.engine.stop_containers([c["Id"] for c in running])
        names = sorted(name for c in running for name in c.get("Names") or [c["Id"][:12]])
        live = [
            c["Id"] for c in running if (c.get("Labels") or {}).get("dev.gantry.role") == "live"
        ]
        if live:
            path = self._stopped_environments_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(live))
        return names

    def _restart_environments(self, progress: Progress) -> None:
        """Serve again what `gantry down` stopped (not what `--keep-environments` left)."""
        path = self._stopped_environments_file()
        try:
            ids = set(json.loads(path.read_text()))
        except (OSError, ValueError):
            return
        known = {c["Id"] for c in self.engine.containers(ENVIRONMENT_LABEL, running=False)}
        again = sorted(ids & known)
        if again:
            progress(f"starting the {len(again)} environment container(s) `gantry down` stopped")
            try:
                self.engine.start_containers(again)
            except StackError as exc:
                _log_warning(f"the environments could not start again: {exc}")
        path.unlink(missing_ok=True)

    def down(self, purge: bool = False, keep_environments: bool = False) -> DownReport:
        """Stop what `up` started, and what runs for it: in-flight runs are cancelled, their
        sandboxes removed, the environments' containers stopped (unless ``keep_environments``).
        ``purge`` also deletes the engine's images and containers."""
        from deployments.inflight import cancel_in_flight, kill_run_processes
        from flows.steps.sandbox.select import reap_stack_leftovers

        report = DownReport()
        if self.receiver.stop():  # first: no new run starts while the others end
            report.stopped.append("webhooks")
        if self.dispatcher.stop():
            report.stopped.append("webhook-dispatcher")
        cancelled = []
        # Ours only: whatever else answers on the port (another stack's server) is not ours
        # to cancel runs on.
        if self.server.process.running() and self.server.healthy():
            # Without a worker nobody acts on Cancelling: end them at once, then their processes.
            timeout = CANCEL_TIMEOUT if self.worker.running() else 0.0
            with prefect_client_settings(self.settings):
                cancelled = asyncio.run(cancel_in_flight(self.settings, timeout))
            report.cancelled_runs = [run.describe() for run in cancelled]
        if self.worker.stop():
            report.stopped.append("worker")
        kill_run_processes([run.id for run in cancelled])
        report.sandboxes_removed = asyncio.run(reap_stack_leftovers(self.settings))
        if not keep_environments:
            try:
                report.environments_stopped = self._stop_environments()
            except StackError as exc:
                _log_warning(f"the environments could not be stopped: {exc}")
        if self.server.stop():
            report.stopped.append("prefect-server")
        if self.engine.stop(purge=purge):
            report.stopped.append("engine")
        if self.registry.stop(purge=purge):
            report.stopped.append("registry")
        return report

    def _worker_polling(self) -> bool:
        if not self.worker.running():
            return False
        return "started" in self.worker.log_tail(50).lower()

    @property
    def warm_status_file(self) -> Path:
        return self.settings.state_dir / "run" / "warm-pool.json"

    def _warm_detail(self) -> str:
        """The warm worker's interpreters and their memory, from the file it keeps."""
        try:
            pool = json.loads(self.warm_status_file.read_text())
        except (OSError, ValueError):
            return ""
        if not self.worker.running():
            return ""
        sizes = [
            f"{each['rss_mib']:.0f} MiB" if each.get("rss_mib") else each.get("state", "?")
            for each in pool.get("interpreters", [])
        ]
        return f", {len(sizes)} warm interpreters ({', '.join(sizes) or 'none'})"

    def status(self) -> list[PartStatus]:
        s = self.settings
        return [
            PartStatus("prefect-server", s.prefect_url, self.server.healthy()),
            PartStatus(
                "worker",
                f"{s.prefect_url}/work-pools/work-pool/{s.work_pool}",
                self.worker.running(),
                f"pool {s.work_pool}{self._warm_detail()}",
            ),
            PartStatus("webhooks", s.webhook_url, self._receiver_up()),
            PartStatus(
                "webhook-dispatcher",
                s.prefect_url,
                self.dispatcher.running(),
                "stored deliveries to flow runs",
            ),
            PartStatus("engine", self.engine.docker_host, self.engine.is_up()),
            PartStatus("registry", self.registry.url, self.registry.is_up()),
        ]

    def is_up(self) -> bool:
        return all(part.up for part in self.status())
