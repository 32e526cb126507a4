"""One request to GitHub, retried within bounds; GitHub's error answers turned into GitHubErrors.

5xx answers and connection errors retry with jittered backoff, rate limits wait as GitHub asks
(retry-after, else until the reset when none remain, else at least a minute, backing off), and
no call sleeps longer than ``RetryPolicy.max_wait`` in total. Other 4xx answers raise at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from clients import retry
from clients.github_errors import (
    GitHubAuthError,
    GitHubConflictError,
    GitHubError,
    GitHubForbiddenError,
    GitHubNotFoundError,
    GitHubRateLimited,
    GitHubUnavailable,
    GitHubValidationError,
)

logger = logging.getLogger("gantry.github")

API_VERSION = "2022-11-28"


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """The shared bounds with room for GitHub's rate limits. ``attempts`` (4) counts the tries
    for 5xx answers and connection errors, and is also the most rate-limit waits."""

    backoff_cap: float = 10.0
    # Total seconds one call may spend sleeping, rate-limit waits included.
    max_wait: float = 300.0
    # Secondary rate limit without retry-after: GitHub asks for at least a minute.
    secondary_min_wait: float = 60.0
    # Added to a primary limit's reset time: our clock and GitHub's differ a little.
    reset_slack: float = 1.0


def error_message(response: httpx.Response) -> tuple[str, str | None, list[dict[str, Any]]]:
    """GitHub's ``message``, ``documentation_url`` and ``errors`` from an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or response.reason_phrase)
        doc = body.get("documentation_url")
        errors = body.get("errors")
        return (
            message,
            doc if isinstance(doc, str) else None,
            [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
        )
    return response.reason_phrase or f"HTTP {response.status_code}", None, []


def error_for(method: str, path: str, response: httpx.Response) -> GitHubError:
    """The GitHubError for a 4xx answer that is not a rate limit."""
    status = response.status_code
    message, doc, errors = error_message(response)
    text = f"{method} {path}: HTTP {status}: {message}"
    if errors:
        details = "; ".join(str(e.get("message") or e.get("code") or e) for e in errors)
        text = f"{text} ({details})"
    if status == 401:
        return GitHubAuthError(text, status=status, documentation_url=doc)
    if status == 403:
        return GitHubForbiddenError(text, status=status, documentation_url=doc)
    if status == 404:
        return GitHubNotFoundError(text, status=status, documentation_url=doc)
    if status == 409:
        return GitHubConflictError(text, status=status, documentation_url=doc)
    if status in (400, 422):
        return GitHubValidationError(text, status=status, documentation_url=doc, errors=errors)
    return GitHubError(text, status=status, documentation_url=doc)


class GitHubHTTP:
    """An httpx client bound to one API URL, sending GitHub's headers and retrying in bounds."""

    def __init__(
        self,
        api_url: str,
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "gantry",
            },
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(
        self,
        method: str,
        path: str,
        bearer: SecretStr,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """The first answer below 400; every other outcome raises a GitHubError."""
        policy = self.policy
        headers = {"Authorization": f"Bearer {bearer.get_secret_value()}"}
        retries = retry.Retries(policy)
        while True:
            try:
                response = await self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.HTTPError as exc:
                reason = f"{method} {path}: {type(exc).__name__}"
                if (delay := retries.failed()) is None:
                    raise GitHubUnavailable(
                        f"{reason} after {retries.failures} attempts ({self.api_url})"
                    ) from exc
                logger.info("GitHub %s; retrying in %.1fs", reason, delay)
                await retries.sleep(delay)
                continue
            status = response.status_code
            if status < 400:
                return response
            if status >= 500:
                if (delay := retries.failed()) is None:
                    message, doc, _ = error_message(response)
                    raise GitHubUnavailable(
                        f"{method} {path}: HTTP {status} after {retries.failures} attempts: "
                        f"{message}",
                        status=status,
                        documentation_url=doc,
                    )
                logger.info("GitHub %s %s: HTTP %d; retrying in %.1fs", method, path, status, delay)
                await retries.sleep(delay)
                continue
            rate_wait = self._rate_limit_wait(response, retries.limited)
            if rate_wait is None:
                raise error_for(method, path, response)
            # The count bounds a limiter that keeps answering "retry-after: 0".
            if not retries.may_wait(rate_wait):
                message, doc, _ = error_message(response)
                raise GitHubRateLimited(
                    f"{method} {path}: rate limited for {rate_wait:.0f}s more, beyond what "
                    f"this call may wait ({policy.max_wait:.0f}s, {policy.attempts} waits): "
                    f"{message}",
                    status=status,
                    documentation_url=doc,
                    retry_after=rate_wait,
                )
            logger.warning("GitHub rate limit on %s %s: waiting %.1fs", method, path, rate_wait)
            await retries.sleep(rate_wait)

    def _rate_limit_wait(self, response: httpx.Response, previous: int) -> float | None:
        """Seconds to wait before retrying, or None when the answer is not a rate limit."""
        if response.status_code not in (403, 429):
            return None
        headers = response.headers
        message = error_message(response)[0].lower()
        retry_after = retry.retry_after_seconds(response)
        if retry_after is not None:
            return retry_after
        if headers.get("x-ratelimit-remaining") == "0":
            try:
                reset = float(headers.get("x-ratelimit-reset", ""))
            except ValueError:
                reset = time.time() + self.policy.secondary_min_wait
            return max(reset - time.time(), 0.0) + self.policy.reset_slack
        if response.status_code == 429 or "rate limit" in message:
            return float(self.policy.secondary_min_wait * 2**previous)
        return None
