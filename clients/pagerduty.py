"""PagerDuty Events API v2: trigger, acknowledge and resolve alerts on one service.

``PagerDuty`` raises ``PagerDutyError``s; ``page`` and ``resolve_page`` are the never-raising
helpers for pipelines. 429 and 5xx retry with jittered backoff; 400 (an invalid event) does not.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import SecretStr

from clients import retry
from core.redact import redact, register_secret

if TYPE_CHECKING:
    from blocks.observability import PagerDutySettings

logger = logging.getLogger("gantry.pagerduty")

DEFAULT_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255

Severity = Literal["critical", "error", "warning", "info"]
Priority = Literal["P1", "P2", "P3"]
SEVERITY_FOR_PRIORITY: dict[str, Severity] = {"P1": "critical", "P2": "error", "P3": "warning"}
_SEVERITIES: frozenset[str] = frozenset({"critical", "error", "warning", "info"})


class PagerDutyError(Exception):
    """PagerDuty refused or failed an event. ``status`` is the HTTP status, when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.message = redact(message)
        self.status = status
        super().__init__(self.message)


class PagerDutyInvalidEvent(PagerDutyError):
    """400: the event is malformed or the routing key unknown. Retrying would not help."""


class PagerDutyRateLimited(PagerDutyError):
    """429 for longer than the call may wait (about 120 events a minute per routing key)."""


class PagerDutyUnavailable(PagerDutyError):
    """5xx answers, timeouts or connection errors that outlasted the retries."""


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """Longer than the shared defaults: a page is worth a minute of retries."""

    attempts: int = 5
    backoff: float = 1.0
    backoff_cap: float = 16.0
    max_wait: float = 60.0


def severity_for(priority: str) -> Severity:
    """PagerDuty's severity for a Gantry priority (P1..P3) or a severity name."""
    value = priority.strip()
    if value.upper() in SEVERITY_FOR_PRIORITY:
        return SEVERITY_FOR_PRIORITY[value.upper()]
    if value.lower() in _SEVERITIES:
        severity: Severity = value.lower()  # type: ignore[assignment]
        return severity
    raise ValueError(f"unknown priority {priority!r}: use P1, P2, P3 or a PagerDuty severity")


def dedup_key(*parts: str) -> str:
    """A stable key for one alert, e.g. ``dedup_key("release", repository, environment)``.

    Keys longer than PagerDuty's limit keep a readable head and a hash of the whole.
    """
    key = "gantry/" + "/".join(p.strip() for p in parts if p.strip())
    if len(key) <= DEDUP_KEY_LIMIT:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[: DEDUP_KEY_LIMIT - 17]}~{digest}"


class PagerDuty:
    """Events API v2 client for the service behind one routing key."""

    def __init__(
        self,
        routing_key: SecretStr,
        events_url: str = DEFAULT_EVENTS_URL,
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 10.0,
    ) -> None:
        register_secret(routing_key)
        self.events_url = events_url
        self.policy = policy or RetryPolicy()
        self._routing_key = routing_key
        self._http = httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, headers={"User-Agent": "gantry"}
        )

    @classmethod
    def from_settings(cls, settings: PagerDutySettings, **kwargs: Any) -> PagerDuty:
        return cls(settings.routing_key, settings.events_url, **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> PagerDuty:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def trigger(
        self,
        summary: str,
        *,
        source: str,
        dedup_key: str,
        severity: str = "P2",
        component: str | None = None,
        group: str | None = None,
        event_class: str | None = None,
        custom_details: Mapping[str, Any] | None = None,
        links: Sequence[Mapping[str, str]] = (),
        timestamp: datetime | None = None,
    ) -> str:
        """Open (or add to) the alert ``dedup_key``; returns the dedup key PagerDuty kept."""
        payload: dict[str, Any] = {
            "summary": summary[:SUMMARY_LIMIT],
            "source": source,
            "severity": severity_for(severity),
            "timestamp": (timestamp or datetime.now(UTC)).isoformat(),
        }
        optional = {
            "component": component,
            "group": group,
            "class": event_class,
            "custom_details": dict(custom_details) if custom_details else None,
        }
        payload.update({k: v for k, v in optional.items() if v})
        extra: dict[str, Any] = {"payload": payload}
        if links:
            extra["links"] = [dict(link) for link in links]
        return await self._send("trigger", dedup_key, extra)

    async def acknowledge(self, dedup_key: str) -> str:
        return await self._send("acknowledge", dedup_key, {})

    async def resolve(self, dedup_key: str) -> str:
        return await self._send("resolve", dedup_key, {})

    async def _send(self, action: str, key: str, extra: dict[str, Any]) -> str:
        if not key or len(key) > DEDUP_KEY_LIMIT:
            raise ValueError(f"dedup_key must be 1..{DEDUP_KEY_LIMIT} characters")
        body = {
            "routing_key": self._routing_key.get_secret_value(),
            "event_action": action,
            "dedup_key": key,
            **extra,
        }
        retries = retry.Retries(self.policy)
        while True:
            try:
                response = await self._http.post(self.events_url, json=body)
            except httpx.HTTPError as exc:
                reason = f"{action}: {type(exc).__name__}"
                if (delay := retries.failed()) is None:
                    raise PagerDutyUnavailable(
                        f"{reason} after {retries.failures} attempts"
                    ) from exc
                logger.info("PagerDuty %s; retrying in %.1fs", reason, delay)
            else:
                status = response.status_code
                if status < 300:
                    return _dedup_key_of(response, key)
                text = f"{action}: HTTP {status}: {_error_text(response)}"
                if status != 429 and status < 500:
                    raise PagerDutyInvalidEvent(text, status=status)
                if (delay := retries.failed()) is None:
                    kind = PagerDutyRateLimited if status == 429 else PagerDutyUnavailable
                    raise kind(f"{text} (after {retries.failures} attempts)", status=status)
                logger.info("PagerDuty %s: HTTP %d; retrying in %.1fs", action, status, delay)
            await retries.sleep(delay)


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return response.reason_phrase
    parts = [str(body.get("message") or body.get("status") or response.reason_phrase)]
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        parts.append("(" + "; ".join(str(e) for e in errors) + ")")
    return " ".join(parts)


def _dedup_key_of(response: httpx.Response, sent: str) -> str:
    try:
        body = response.json()
    except ValueError:
        return sent
    key = body.get("dedup_key") if isinstance(body, dict) else None
    return key if isinstance(key, str) and key else sent


async def page(
    settings: PagerDutySettings | None,
    summary: str,
    *,
    source: str,
    dedup_key: str,
    severity: str = "P2",
    custom_details: Mapping[str, Any] | None = None,
    links: Sequence[Mapping[str, str]] = (),
    policy: RetryPolicy | None = None,
) -> bool:
    """Trigger an alert when PagerDuty is configured; True when PagerDuty took it. Never raises."""
    if settings is None:
        return False
    try:
        async with PagerDuty.from_settings(settings, policy=policy) as client:
            await client.trigger(
                summary,
                source=source,
                dedup_key=dedup_key,
                severity=severity,
                custom_details=custom_details,
                links=links,
            )
    except (PagerDutyError, ValueError) as exc:
        logger.warning("PagerDuty did not take the page: %s", redact(str(exc)))
        return False
    except Exception as exc:  # paging trouble must not fail the pipeline that pages
        logger.warning("paging through PagerDuty failed: %s", type(exc).__name__)
        return False
    return True


async def resolve_page(
    settings: PagerDutySettings | None, dedup_key: str, *, policy: RetryPolicy | None = None
) -> bool:
    """Resolve the alert ``dedup_key`` when PagerDuty is configured. Never raises."""
    if settings is None:
        return False
    try:
        async with PagerDuty.from_settings(settings, policy=policy) as client:
            await client.resolve(dedup_key)
    except (PagerDutyError, ValueError) as exc:
        logger.warning("PagerDuty did not resolve %s: %s", dedup_key, redact(str(exc)))
        return False
    except Exception as exc:  # paging trouble must not fail the pipeline that pages
        logger.warning("resolving through PagerDuty failed: %s", type(exc).__name__)
        return False
    return True
