"""Local container deploy target: each environment is a container on the local engine.

The new version first runs beside the old one on a spare loopback port; only when it answers its
health check does it take over the environment's port. The container it replaced is kept, stopped,
so the environment can go back to it. The environment's port never serves an unhealthy version
for longer than the swap itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from clients.retry import RetryPolicy, retry_call
from core.ports import free_port, port_is_free
from flows.config import Image
from flows.deploy.targets import (
    DeployError,
    DeployOutcome,
    DeployRequest,
    Environment,
    confined_manifests,
)
from flows.logs import step_logger

LABEL = "dev.gantry"


# Podman can refuse to remove a container it is still tearing down ("device or resource busy");
# a moment later it succeeds. Bounded and jittered, so a real failure still surfaces quickly.
REMOVE_POLICY = RetryPolicy(attempts=6, backoff=0.5, backoff_cap=2.0, max_wait=8.0)


def _still_busy(exc: Exception) -> bool:
    return isinstance(exc, APIError) and "busy" in str(exc).lower()


def remove_container(container: Container) -> None:
    """Force-remove ``container``; gone already counts as removed."""

    def remove() -> None:
        try:
            container.remove(force=True)
        except NotFound:
            return

    retry_call(
        remove,
        transient=_still_busy,
        policy=REMOVE_POLICY,
        what=f"removing container {container.name}",
        logger=step_logger("deploy"),
    )


@dataclass(frozen=True)
class Swap:
    """How one image's swap ended; ``previous_serves`` is False when its old container, put
    back after a failure, could not start again."""

    ok: bool
    reason: str = ""
    previous_serves: bool = True


class PortSlots:
    """Which port slot each (repository, image) owns, kept in the state folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def slot(self, key: str) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_suffix(".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                slots: dict[str, int] = json.loads(self.path.read_text())
            except (OSError, ValueError):
                slots = {}
            if key not in slots:
                slots[key] = max(slots.values(), default=-1) + 1
                self.path.write_text(json.dumps(slots, indent=1, sort_keys=True))
            return slots[key]


HEALTH_INTERVAL = 0.25


class LocalContainerTarget:
    """Deploys images by digest as containers on 127.0.0.1 ports, one port per environment."""

    def __init__(
        self,
        docker_host: str,
        ports: dict[str, int],
        state_dir: Path,
        host: str = "127.0.0.1",
        health_timeout: float = 60.0,
    ) -> None:
        self.docker_host = docker_host
        self.ports = ports
        self.host = host
        self.health_timeout = health_timeout
        self.slots = PortSlots(state_dir / "targets" / "port-slots.json")

    def _client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=120)

    @staticmethod
    def _name(slug: str, environment: str, image: str, role: str = "") -> str:
        suffix = f"-{role}" if role else ""
        return f"gantry-{slug}-{environment}-{image}{suffix}"

    def _port(self, slug: str, environment: str, image: str) -> int:
        # Each (repository, image) keeps one slot; a slot is a pair of ports, staging and
        # production, so that several services can run side by side on one machine.
        return self.ports[environment] + 2 * self.slots.slot(f"{slug}/{image}")

    def url(self, slug: str, environment: str, image: str) -> str:
        return f"http://{self.host}:{self._port(slug, environment, image)}"

    # -- reading ---------------------------------------------------------------------------
    def _live(self, client: docker.DockerClient, slug: str, env: str) -> dict[str, Container]:
        found = client.containers.list(
            filters={
                "label": [f"{LABEL}.repository={slug}", f"{LABEL}.environment={env}"],
                "status": "running",
            }
        )
        return {
            c.labels[f"{LABEL}.image"]: c for c in found if c.labels.get(f"{LABEL}.role") == "live"
        }

    def current_sync(self, repository_slug: str, environment: Environment) -> dict[str, str]:
        client = self._client()
        try:
            live = self._live(client, repository_slug, environment)
            return {name: c.labels[f"{LABEL}.ref"] for name, c in live.items()}
        finally:
            client.close()

    async def current(self, repository_slug: str, environment: Environment) -> dict[str, str]:
        return await asyncio.to_thread(self.current_sync, repository_slug, environment)

    # -- running ---------------------------------------------------------------------------
    def _healthy(self, port: int, path: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://{self.host}:{port}{path}", timeout=2.0)
                if response.status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(HEALTH_INTERVAL)
        return False

    def _run(
        self,
        client: docker.DockerClient,
        request: DeployRequest,
        spec: Image,
        ref: str,
        host_port: int,
        role: str,
    ) -> Container:
        name = self._name(request.repository_slug, request.environment, spec.name, role)
        self._remove(client, name)
        labels = {
            f"{LABEL}.repository": request.repository_slug,
            f"{LABEL}.environment": request.environment,
            f"{LABEL}.image": spec.name,
            f"{LABEL}.ref": ref,
            f"{LABEL}.role": role or "live",
            f"{LABEL}.commit": request.commit_sha,
        }
        container: Container = client.containers.run(
            ref,
            name=name,
            detach=True,
            labels=labels,
            environment={
                "PORT": str(spec.port),
                "APP_COMMIT": request.commit_sha,
                "GANTRY_ENVIRONMENT": request.environment,
            },
            ports={f"{spec.port}/tcp": (self.host, host_port)},
        )
        return container

    @staticmethod
    def _remove(client: docker.DockerClient, name: str) -> None:
        with contextlib.suppress(NotFound):
            remove_container(client.containers.get(name))

    @staticmethod
    def _logs(container: Container) -> str:
        try:
            raw: bytes = container.logs(tail=20)
        except DockerException:
            return ""
        return raw.decode(errors="replace").strip()

    def _swap(
        self, client: docker.DockerClient, request: DeployRequest, spec: Image, ref: str, port: int
    ) -> Swap:
        """Replace the live container of ``spec`` with ``ref``.

        On a failure after the old container was stopped, the old one is put back under its
        name and started; the result says whether it serves again.
        """
        logger = step_logger("deploy")
        env, slug = request.environment, request.repository_slug
        candidate = self._run(client, request, spec, ref, free_port(self.host), "candidate")
        candidate.reload()
        bound = candidate.ports.get(f"{spec.port}/tcp") or [{}]
        trial_port = int(bound[0].get("HostPort") or 0)
        logger.info("%s: trying %s on port %d", spec.name, ref, trial_port)
        healthy = trial_port and self._healthy(trial_port, spec.health_path, self.health_timeout)
        logs = self._logs(candidate)
        remove_container(candidate)
        if not healthy:
            return Swap(
                False, f"{spec.name} never answered {spec.health_path}; last output: {logs[-300:]}"
            )
        live_name = self._name(slug, env, spec.name)
        previous_name = self._name(slug, env, spec.name, "previous")
        self._remove(client, previous_name)
        try:
            old = client.containers.get(live_name)
            old.stop(timeout=10)
            old.rename(previous_name)
        except NotFound:
            old = None
        try:
            new = self._run(client, request, spec, ref, port, "")
        except DockerException as exc:
            # Another program took the port once the old container let it go (after
            # _refuse_taken_ports looked), or the engine refused the container. What the engine
            # made of it must not pass for the live version.
            self._remove(client, live_name)
            return self._put_back(
                old, live_name, f"{spec.name} could not start on port {port}: {exc}"
            )
        if self._healthy(port, spec.health_path, self.health_timeout):
            return Swap(True)
        reason = f"{spec.name} did not answer on port {port}: {self._logs(new)[-500:]}"
        remove_container(new)
        return self._put_back(old, live_name, reason)

    @staticmethod
    def _put_back(old: Container | None, live_name: str, reason: str) -> Swap:
        """A failed swap: rename ``old`` back to the live name and start it again."""
        if old is None:
            return Swap(False, reason)
        try:
            old.rename(live_name)
            old.start()
        except DockerException as exc:
            why = f"{reason}; the previous version could not start again: {exc}"
            return Swap(False, why, previous_serves=False)
        return Swap(False, reason)

    def deploy_sync(self, request: DeployRequest) -> DeployOutcome:
        logger = step_logger("deploy")
        specs = {spec.name: spec for spec in request.image_specs}
        client = self._client()
        try:
            live = self._live(client, request.repository_slug, request.environment)
            previous = {n: c.labels[f"{LABEL}.ref"] for n, c in live.items()}
            self._refuse_taken_ports(request, live, previous)
            done: list[str] = []
            for name, ref in sorted(request.images.items()):
                spec = specs.get(name) or Image(name=name)
                try:
                    client.images.pull(ref)
                except (ImageNotFound, APIError) as exc:
                    raise self._failure(
                        client, request, previous, done, Swap(False, f"cannot pull {ref}: {exc}")
                    ) from exc
                port = self._port(request.repository_slug, request.environment, name)
                swap = self._swap(client, request, spec, ref, port)
                if not swap.ok:
                    raise self._failure(client, request, previous, done, swap)
                done.append(name)
                logger.info("%s: %s serves %s", request.environment, name, ref)
        except DockerException as exc:
            raise DeployError(
                f"container engine error: {exc}", rolled_back=False, previous_images=previous
            ) from exc
        finally:
            client.close()
        first = sorted(request.images)[0] if request.images else ""
        return DeployOutcome(
            url=self.url(request.repository_slug, request.environment, first) if first else None,
            previous_images=previous,
            detail=f"{len(done)} container(s) on {self.host}",
        )

    def _refuse_taken_ports(
        self, request: DeployRequest, live: dict[str, Container], previous: dict[str, str]
    ) -> None:
        """Refuse the deploy when an environment port is held by anything but our live container.

        A swap stops and renames the live container before the new one binds the port; were the
        port held by another program, the bind would fail after the old version was stopped. So
        each port is checked before anything is touched: free, or published by the very live
        container the swap replaces (stopping it frees the port).
        """
        for name in sorted(request.images):
            port = self._port(request.repository_slug, request.environment, name)
            if port_is_free(self.host, port):
                continue
            holder = live.get(name)
            bindings = holder.ports.values() if holder is not None else []
            if any(str(port) == b.get("HostPort") for bound in bindings for b in bound or []):
                continue
            raise DeployError(
                f"deploy to {request.environment} failed: port {port} on {self.host} (for "
                f"{name}) is taken by another program; nothing was stopped, stop that program "
                f"or set GANTRY_{request.environment.upper()}_PORT to a free port",
                rolled_back=False,
                previous_images=previous,
            )

    def _failure(
        self,
        client: docker.DockerClient,
        request: DeployRequest,
        previous: dict[str, str],
        done: list[str],
        failed: Swap,
    ) -> DeployError:
        """Put back what ran before for the images already swapped; say what happened."""
        specs = {spec.name: spec for spec in request.image_specs}
        restored = True
        for name in done:
            ref = previous.get(name)
            if ref is None:
                self._remove(client, self._name(request.repository_slug, request.environment, name))
                continue
            port = self._port(request.repository_slug, request.environment, name)
            swap = self._swap(client, request, specs.get(name) or Image(name=name), ref, port)
            restored = restored and swap.ok
        restored = restored and failed.previous_serves
        serving = "the previous version still serves" if previous and restored else ""
        message = f"deploy to {request.environment} failed: {failed.reason}"
        if serving:
            message += f"; {serving}"
        return DeployError(
            message, rolled_back=bool(previous) and restored, previous_images=previous
        )

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        # Containers need no manifests, but a checkout whose manifests lead out of it is refused
        # here as on every target: the deploy stage never reads outside the checkout.
        confined_manifests(request, required=False)
        return await asyncio.to_thread(self.deploy_sync, request)

    def remove_environment(self, repository_slug: str, environment: Environment) -> None:
        """Stop and remove every container of one environment (used by `gantry down --purge`)."""
        client = self._client()
        try:
            for container in client.containers.list(
                all=True,
                filters={
                    "label": [
                        f"{LABEL}.repository={repository_slug}",
                        f"{LABEL}.environment={environment}",
                    ]
                },
            ):
                remove_container(container)
        finally:
            client.close()
