"""What Gantry measures, sent as DogStatsD datagrams over UDP to a Datadog agent.

``Metrics`` is a no-op when no agent is configured, and never raises or waits: datagrams go
out unbuffered on a non-blocking UDP socket, and any error is swallowed (logged once per kind).
Every metric is named ``gantry.*``; tag values are sanitized to what Datadog accepts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol

from datadog.dogstatsd.base import DogStatsd

logger = logging.getLogger("gantry.metrics")

PREFIX = "gantry."
DEFAULT_PORT = 8125
ENV_HOST = "DD_AGENT_HOST"
ENV_PORT = "DD_DOGSTATSD_PORT"

PipelineOutcome = str  # success | failed | cancelled | ... (whatever the run ended as)
WebhookOutcome = Literal["accepted", "rejected", "duplicate", "ignored"]
ReleaseOutcome = Literal["success", "failed", "rolled_back"]

_TAG_UNSAFE = re.compile(r"[^a-z0-9_\-./:]+")
_MAX_TAG = 200


def tag(name: str, value: object) -> str:
    """``name:value`` with the value lower-cased and stripped of characters Datadog rejects.

    ``,``, ``|`` and ``#`` would break the datagram; Datadog turns other odd characters into
    underscores anyway, so doing it here keeps names predictable for monitors.
    """
    text = _TAG_UNSAFE.sub("_", str(value).strip().lower()).strip("_") or "unknown"
    return f"{name}:{text}"[:_MAX_TAG]


class AgentSettings(Protocol):
    """What ``Metrics.from_settings`` reads (``blocks.observability.DatadogSettings`` fits)."""

    agent_host: str | None
    agent_port: int
    tags: list[str]


class Metrics:
    """Named Gantry metrics over DogStatsD. ``Metrics()`` with no host is disabled."""

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        constant_tags: Iterable[str] = (),
    ) -> None:
        self.host = host.strip() if host and host.strip() else None
        self.port = port or DEFAULT_PORT
        self._reported: set[str] = set()
        self._lock = threading.Lock()
        self._client: DogStatsd | None = None
        if self.host is None:
            return
        _quiet_library_logger()
        try:
            # Resolved once here: the library would otherwise look the name up again on every
            # send after a failure, and a slow resolver would stall the caller each time.
            address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][4][0]
            self._client = DogStatsd(
                host=str(address),
                port=self.port,
                constant_tags=[t for t in constant_tags if t],
                # Unbuffered, unaggregated and in the caller's thread: each call is one
                # non-blocking sendto, so nothing is lost when a short process exits.
                disable_buffering=True,
                disable_aggregation=True,
                disable_background_sender=True,
                disable_telemetry=True,
                origin_detection_enabled=False,
            )
        except Exception as exc:
            self._report_once("init", exc)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Metrics:
        """Agent from ``DD_AGENT_HOST`` / ``DD_DOGSTATSD_PORT``; disabled when neither is set."""
        env = os.environ if env is None else env
        host = env.get(ENV_HOST, "").strip()
        port_text = env.get(ENV_PORT, "").strip()
        if not host and not port_text:
            return cls()
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            logger.warning("%s is not a port number: metrics are off", ENV_PORT)
            return cls()
        return cls(host or "127.0.0.1", port)

    @classmethod
    def from_settings(cls, settings: AgentSettings | None) -> Metrics:
        """Agent from a Datadog settings block; ``None`` or no host: from the environment."""
        if settings is None or not settings.agent_host:
            return cls.from_env()
        return cls(settings.agent_host, settings.agent_port, constant_tags=settings.tags)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close_socket()
            except Exception as exc:
                self._report_once("close", exc)

    # --- pipelines ------------------------------------------------------------------------------

    def pipeline_finished(
        self, pipeline: str, outcome: PipelineOutcome, seconds: float, repository: str
    ) -> None:
        tags = [tag("pipeline", pipeline), tag("outcome", outcome), tag("repository", repository)]
        self._send("increment", "pipeline.runs", 1, tags)
        self._send("distribution", "pipeline.duration", seconds, tags)

    def stage_finished(
        self, pipeline: str, stage: str, outcome: PipelineOutcome, seconds: float, repository: str
    ) -> None:
        tags = [
            tag("pipeline", pipeline),
            tag("stage", stage),
            tag("outcome", outcome),
            tag("repository", repository),
        ]
        self._send("increment", "stage.runs", 1, tags)
        self._send("distribution", "stage.duration", seconds, tags)

    def queue_time(self, pipeline: str, seconds: float, repository: str) -> None:
        """Seconds from the webhook's arrival to the flow run running."""
        tags = [tag("pipeline", pipeline), tag("repository", repository)]
        self._send("distribution", "pipeline.queue_time", seconds, tags)

    # --- webhooks -------------------------------------------------------------------------------

    def webhook_delivery(self, outcome: WebhookOutcome) -> None:
        self._send("increment", "webhook.deliveries", 1, [tag("outcome", outcome)])

    def webhook_backlog(self, n: int) -> None:
        """Deliveries stored but not yet dispatched."""
        self._send("gauge", "webhook.backlog", n, [])

    # --- deployments and releases ---------------------------------------------------------------

    def deployment(self, environment: str, outcome: PipelineOutcome, repository: str) -> None:
        tags = [
            tag("environment", environment),
            tag("outcome", outcome),
            tag("repository", repository),
        ]
        self._send("increment", "deployments", 1, tags)

    def rollback(self, environment: str, repository: str) -> None:
        tags = [tag("environment", environment), tag("repository", repository)]
        self._send("increment", "rollbacks", 1, tags)

    def release_outcome(self, outcome: ReleaseOutcome, repository: str) -> None:
        tags = [tag("outcome", outcome), tag("repository", repository)]
        self._send("increment", "release.outcome", 1, tags)

    def approval_refused(self, reason: str, repository: str) -> None:
        """An answer at a release's approval gate was refused (unsigned, stale, ...)."""
        tags = [tag("reason", reason), tag("repository", repository)]
        self._send("increment", "release.approval_refused", 1, tags)

    def dora_gauge(self, name: str, value: float, repository: str | None, window: str) -> None:
        """``gantry.dora.<name>``; repository ``None`` means all repositories (tag ``all``)."""
        tags = [tag("repository", repository or "all"), tag("window", window)]
        self._send("gauge", f"dora.{name}", value, tags)

    def worker_heartbeat(self, work_pool: str, environment: str | None) -> None:
        """One successful poll of ``work_pool``: the count the worker-not-polling monitor sums.

        The DogStatsD library already tags every metric ``env:$DD_ENV`` when that is set, and a
        settings block may carry an ``env:`` tag too; ``environment`` is added only when neither
        did, so the monitor's ``env:`` filter never sees two values on one point.
        """
        tags = [tag("work_pool", work_pool)]
        client = self._client
        if environment and client is not None:
            constant: Iterable[str] = client.constant_tags or ()
            if not any(str(t).startswith("env:") for t in constant):
                tags.append(tag("env", environment))
        self._send("increment", "worker.heartbeat", 1, tags)

    # --- plumbing -------------------------------------------------------------------------------

    def _send(self, kind: str, name: str, value: float, tags: list[str]) -> None:
        client = self._client
        if client is None:
            return
        try:
            method: Any = getattr(client, kind)
            method(PREFIX + name, value, tags=tags)
        except Exception as exc:  # metrics must never break what they measure
            self._report_once(kind, exc)

    def _report_once(self, where: str, exc: Exception) -> None:
        key = f"{where}:{type(exc).__name__}"
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
        logger.warning(
            "DogStatsD %s failed (%s: %s); further errors like it are not logged",
            where,
            type(exc).__name__,
            exc,
        )


class _FirstOfEachKind(logging.Filter):
    """Lets each distinct message template of the DogStatsD library through once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[object] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.levelno, record.msg)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _quiet_library_logger() -> None:
    # The library logs every dropped packet; one line per kind of trouble is enough.
    library_logger = logging.getLogger("datadog.dogstatsd")
    if not any(isinstance(f, _FirstOfEachKind) for f in library_logger.filters):
        library_logger.addFilter(_FirstOfEachKind())


_shared: Metrics | None = None
_shared_lock = threading.Lock()


def get_metrics() -> Metrics:
    """A process-wide ``Metrics`` from the environment, made on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Metrics.from_env()
        return _shared


def set_metrics(metrics: Metrics | None) -> None:
    """Replace the process-wide ``Metrics`` (after loading a block; tests reset it with None)."""
    global _shared
    with _shared_lock:
        _shared = metrics


async def load_metrics(block_name: str | None = None) -> Metrics:
    """``Metrics`` from the saved Datadog block (else the environment), made process-wide."""
    from blocks.observability import DEFAULT_DATADOG_BLOCK, load_datadog_settings

    settings = await load_datadog_settings(block_name or DEFAULT_DATADOG_BLOCK)
    metrics = Metrics.from_settings(settings)
    set_metrics(metrics)
    return metrics
