"""Datadog's HTTP API, the parts Gantry uses: events and DORA deployments and failures.

``DatadogAPI`` raises ``DatadogError``s; ``report_deployment`` is what pipelines call: it sends
what the settings allow and never raises (a Datadog outage must not fail a release).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import SecretStr

from clients.retry import Retries
from clients.retry import RetryPolicy as RetryPolicy  # re-exported: callers import it from here
from core.redact import redact, register_secret

if TYPE_CHECKING:
    from blocks.observability import DatadogSettings

logger = logging.getLogger("gantry.datadog")

DEFAULT_API_URL = "https://api.datadoghq.com"
EVENT_TEXT_LIMIT = 4000
AlertType = Literal["error", "warning", "info", "success"]
DeploymentOutcome = Literal["success", "failed", "rolled_back"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DatadogError(Exception):
    """Datadog refused or failed a request. ``status`` is the HTTP status, when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.message = redact(message)
        self.status = status
        super().__init__(self.message)


class DatadogAuthError(DatadogError):
    """401/403: the API key is wrong or lacks the permission."""


class DatadogRequestError(DatadogError):
    """400 and other 4xx: Datadog rejected the body. Retrying would not help."""


class DatadogRateLimited(DatadogError):
    """429 for longer than the call may wait."""


class DatadogUnavailable(DatadogError):
    """5xx answers, timeouts or connection errors that outlasted the retries."""


class DatadogProtocolError(DatadogError):
    """Datadog answered with a shape Gantry does not understand."""


def epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, exactly (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors:
            if isinstance(error, dict):
                title, detail = error.get("title"), error.get("detail")
                parts.append(": ".join(str(p) for p in (title, detail) if p) or str(error))
            else:
                parts.append(str(error))
        return "; ".join(parts)
    return response.reason_phrase or f"HTTP {response.status_code}"


class DatadogAPI:
    """An httpx client for one Datadog site, authenticated with ``DD-API-KEY``."""

    def __init__(
        self,
        api_key: SecretStr,
        api_url: str = DEFAULT_API_URL,
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 10.0,
    ) -> None:
        register_secret(api_key)
        self.api_url = api_url.rstrip("/")
        # The shared defaults suit Datadog: reporting must not hold a pipeline up for long.
        self.policy = policy or RetryPolicy()
        self._api_key = api_key
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            timeout=timeout,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "gantry"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> DatadogAPI:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def post_event(
        self,
        title: str,
        text: str,
        *,
        tags: Iterable[str] = (),
        alert_type: AlertType = "info",
        priority: Literal["normal", "low"] = "normal",
        host: str | None = None,
        date_happened: datetime | None = None,
        aggregation_key: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/events``; the created event as Datadog returns it."""
        body: dict[str, Any] = {
            "title": title[:100],
            "text": text[:EVENT_TEXT_LIMIT],
            "tags": list(tags),
            "alert_type": alert_type,
            "priority": priority,
            "source_type_name": "gantry",
        }
        if host:
            body["host"] = host
        if date_happened is not None:
            body["date_happened"] = epoch_ns(date_happened) // 1_000_000_000
        if aggregation_key:
            body["aggregation_key"] = aggregation_key[:100]
        answer = await self._post("/api/v1/events", body)
        event = answer.get("event")
        if not isinstance(event, dict):
            raise DatadogProtocolError("POST /api/v1/events: the answer has no event")
        return event

    async def dora_deployment(
        self,
        *,
        service: str,
        started_at: datetime,
        finished_at: datetime,
        commit_sha: str | None = None,
        repository_url: str | None = None,
        env: str | None = None,
        version: str | None = None,
        deployment_id: str | None = None,
        team: str | None = None,
        custom_tags: Sequence[str] = (),
    ) -> str:
        """``POST /api/v2/dora/deployment``; the id Datadog gives the deployment."""
        attributes: dict[str, Any] = {
            "service": service,
            "started_at": epoch_ns(started_at),
            "finished_at": epoch_ns(finished_at),
        }
        git = _git(commit_sha, repository_url)
        optional = {
            "git": git,
            "env": env,
            "version": version,
            "id": deployment_id,
            "team": team,
            "custom_tags": list(custom_tags) or None,
        }
        attributes.update({k: v for k, v in optional.items() if v})
        return await self._post_dora("/api/v2/dora/deployment", attributes)

    async def dora_failure(
        self,
        *,
        services: Sequence[str],
        started_at: datetime,
        finished_at: datetime | None = None,
        name: str | None = None,
        severity: str | None = None,
        env: str | None = None,
        commit_sha: str | None = None,
        repository_url: str | None = None,
        version: str | None = None,
    ) -> str:
        """``POST /api/v2/dora/failure``; the id Datadog gives the failure."""
        attributes: dict[str, Any] = {
            "services": list(services),
            "started_at": epoch_ns(started_at),
        }
        optional = {
            "finished_at": epoch_ns(finished_at) if finished_at is not None else None,
            "name": name,
            "severity": severity,
            "env": env,
            "git": _git(commit_sha, repository_url),
            "version": version,
        }
        attributes.update({k: v for k, v in optional.items() if v})
        return await self._post_dora("/api/v2/dora/failure", attributes)

    async def _post_dora(self, path: str, attributes: dict[str, Any]) -> str:
        answer = await self._post(path, {"data": {"attributes": attributes}})
        data = answer.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise DatadogProtocolError(f"POST {path}: the answer has no data.id")
        return str(data["id"])

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"DD-API-KEY": self._api_key.get_secret_value()}
        retries = Retries(self.policy)
        while True:
            try:
                response = await self._http.post(path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                reason = f"POST {path}: {type(exc).__name__}"
                if (delay := retries.failed()) is None:
                    raise DatadogUnavailable(f"{reason} after {retries.failures} attempts") from exc
                logger.info("Datadog %s; retrying in %.1fs", reason, delay)
            else:
                status = response.status_code
                if status < 300:
                    try:
                        answer = response.json()
                    except ValueError as exc:
                        raise DatadogProtocolError(f"POST {path}: the answer is not JSON") from exc
                    return answer if isinstance(answer, dict) else {}
                text = f"POST {path}: HTTP {status}: {_error_text(response)}"
                if status in (401, 403):
                    raise DatadogAuthError(text, status=status)
                if status != 429 and status < 500:
                    raise DatadogRequestError(text, status=status)
                delay = retries.failed(_reset_seconds(response) if status == 429 else 0.0)
                if delay is None:
                    kind = DatadogRateLimited if status == 429 else DatadogUnavailable
                    raise kind(f"{text} (after {retries.failures} attempts)", status=status)
                logger.info("Datadog POST %s: HTTP %d; retrying in %.1fs", path, status, delay)
            await retries.sleep(delay)


def _git(commit_sha: str | None, repository_url: str | None) -> dict[str, str] | None:
    if not commit_sha or not repository_url:
        return None  # Datadog wants both or neither
    return {"commit_sha": commit_sha, "repository_url": repository_url}


def _reset_seconds(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("x-ratelimit-reset", "0")), 0.0)
    except ValueError:
        return 0.0


_ALERT: dict[str, AlertType] = {"success": "success", "failed": "error", "rolled_back": "warning"}
_VERB = {"success": "deployed", "failed": "failed to deploy", "rolled_back": "rolled back"}


async def report_deployment(
    settings: DatadogSettings | None,
    *,
    service: str,
    repository: str,
    environment: str,
    outcome: DeploymentOutcome,
    started_at: datetime,
    finished_at: datetime,
    commit_sha: str,
    version: str | None = None,
    deployment_id: str | None = None,
    team: str | None = None,
    repository_url: str | None = None,
    run_url: str | None = None,
    policy: RetryPolicy | None = None,
) -> bool:
    """Send a deployment event and its DORA records; True when everything was accepted.

    Without an API key it does nothing. It never raises: failures are logged and dropped.
    A failed or rolled-back deployment is also reported as a DORA failure starting when it
    finished.
    """
    if settings is None or settings.api_key is None:
        return False
    repository_url = repository_url or f"https://github.com/{repository}"
    tags = [
        f"service:{service}",
        f"repository:{repository}",
        f"env:{environment}",
        f"outcome:{outcome}",
        "source:gantry",
        *settings.tags,
    ]
    lines = [
        f"Repository: {repository}",
        f"Commit: {commit_sha}",
        f"Environment: {environment}",
        f"Outcome: {outcome}",
    ]
    if version:
        lines.append(f"Version: {version}")
    if run_url:
        lines.append(f"Run: {run_url}")
    try:
        async with DatadogAPI(settings.api_key, settings.api_url, policy=policy) as api:
            await api.post_event(
                f"{service} {_VERB[outcome]} to {environment}"
                if outcome != "rolled_back"
                else f"{service} rolled back in {environment}",
                "\n".join(lines),
                tags=tags,
                alert_type=_ALERT[outcome],
                date_happened=finished_at,
                aggregation_key=f"gantry-{repository}-{environment}",
            )
            await api.dora_deployment(
                service=service,
                started_at=started_at,
                finished_at=finished_at,
                commit_sha=commit_sha,
                repository_url=repository_url,
                env=environment,
                version=version,
                deployment_id=deployment_id,
                team=team,
                custom_tags=[f"outcome:{outcome}", f"repository:{repository}"],
            )
            if outcome != "success":
                await api.dora_failure(
                    services=[service],
                    started_at=finished_at,
                    name=f"{service} {_VERB[outcome]} to {environment}",
                    env=environment,
                    commit_sha=commit_sha,
                    repository_url=repository_url,
                    version=version,
                )
    except DatadogError as exc:
        logger.warning("Datadog did not take the deployment report: %s", exc)
        return False
    except Exception as exc:  # reporting must never fail the pipeline it reports on
        logger.warning("reporting the deployment to Datadog failed: %s", type(exc).__name__)
        return False
    return True
