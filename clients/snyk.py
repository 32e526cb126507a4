"""Snyk's vulnerability tests over HTTP: the v1 pip test and the REST issues of one package.

5xx answers and connection errors retry with jittered backoff; 429 waits as Snyk asks
(Retry-After, else a jittered backoff); no call sleeps longer than ``RetryPolicy.max_wait`` in
total. 401, 403, 404 and other 4xx answers raise at once. The token never appears in a message.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, Field, SecretStr

from clients import retry

logger = logging.getLogger("gantry.snyk")

DEFAULT_API_URL = "https://api.snyk.io"
REST_VERSION = "2024-10-15"
SEVERITIES = ("info", "low", "medium", "high", "critical")
# A runaway ``links.next`` chain must end: 100 pages of 100 issues is far beyond any package.
MAX_PAGES = 100
PAGE_LIMIT = 100


class SnykError(Exception):
    """Snyk refused or failed a request. ``status`` is the HTTP status, when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.message = message
        self.status = status
        super().__init__(message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class SnykAuthError(SnykError):
    """401 or 403: the token is wrong, expired, or not allowed in this organization."""


class SnykNotFoundError(SnykError):
    """404: no such organization or package (or no access to it)."""


class SnykRateLimited(SnykError):
    """Still rate limited after the waits this call may spend."""


class SnykUnavailable(SnykError):
    """5xx answers, timeouts or connection errors that outlasted the retries."""


class SnykResponseError(SnykError):
    """Snyk answered with something that is not the documented JSON shape."""


class Finding(BaseModel):
    """One known vulnerability in one package version."""

    package: str
    version: str
    severity: str
    id: str
    title: str
    url: str | None = None
    fixed_in: list[str] = Field(default_factory=list)
    # The dependency chain that brings the package in; the first element is the direct one.
    from_path: list[str] = Field(default_factory=list)
    # The manifest it was found through, relative to the checkout (set by the scan).
    manifest: str = ""


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """The shared bounds, slower: a scan can wait. ``attempts`` (4) counts the tries for 5xx
    answers and connection errors, and is also the most rate-limit waits."""

    backoff: float = 1.0
    backoff_cap: float = 30.0
    max_wait: float = 120.0
    # The longest single Retry-After this client honours; longer asks give up at once.
    max_retry_after: float = 60.0


def _error_text(response: httpx.Response) -> str:
    """Snyk's words from an error answer: v1 ``message``/``error``, REST ``errors[].detail``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list):
            details = [
                str(e.get("detail") or e.get("title") or "") for e in errors if isinstance(e, dict)
            ]
            if any(details):
                return "; ".join(d for d in details if d)
        for key in ("message", "error"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    return response.reason_phrase or f"HTTP {response.status_code}"


def _severity(value: object) -> str:
    text = str(value or "").lower()
    if text not in SEVERITIES:
        raise SnykResponseError(f"unknown severity {text!r} in Snyk's answer")
    return text


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _fixed_in_v1(vuln: dict[str, Any], package: str) -> list[str]:
    """``fixedIn`` when given; else the vulnerable package's own step of ``upgradePath``.

    ``upgradePath`` runs parallel to ``from``: ``false`` where nothing changes, ``"pkg@ver"``
    where an upgrade is needed. Its step for the vulnerable package (the last one) is the
    fixed version; an upgrade of some other package is a remedy, not a fixed version.
    """
    fixed = _strings(vuln.get("fixedIn"))
    if fixed:
        return fixed
    steps = vuln.get("upgradePath")
    last = steps[-1] if isinstance(steps, list) and steps else None
    if isinstance(last, str) and "@" in last[1:]:
        name, _, version = last.rpartition("@")
        if _pypi_name(name) == _pypi_name(package) and version:
            return [version]
    return []


def _pypi_name(name: str) -> str:
    # The PyPI rule (PEP 503): lower case, runs of "-", "_", "." are one "-".
    return re.sub(r"[-_.]+", "-", name).lower()


def purl(ecosystem: str, name: str, version: str) -> str:
    """The package URL Snyk's REST API expects, e.g. ``pkg:pypi/django@4.2.14``."""
    if ecosystem == "pypi":
        name = _pypi_name(name)
    return f"pkg:{ecosystem}/{quote(name, safe='/')}@{quote(version, safe='')}"


class SnykClient:
    """Snyk's test APIs for one token and organization. Use ``async with``."""

    def __init__(
        self,
        token: SecretStr,
        *,
        api_url: str = DEFAULT_API_URL,
        org_id: str | None = None,
        timeout: float = 30.0,
        policy: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.org_id = org_id
        self.policy = policy or RetryPolicy()
        self._token = token
        self._http = httpx.AsyncClient(
            base_url=self.api_url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": "gantry"},
        )

    def __repr__(self) -> str:
        return f"SnykClient(api_url={self.api_url!r}, org_id={self.org_id!r})"

    async def __aenter__(self) -> SnykClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- the two tests ---------------------------------------------------------------------

    async def test_requirements(self, contents: str) -> list[Finding]:
        """Known vulnerabilities of a requirements.txt text, transitive dependencies included."""
        params = {"org": self.org_id} if self.org_id else None
        body = {"encoding": "plain", "files": {"target": {"contents": contents}}}
        response = await self._send("POST", "/v1/test/pip", json=body, params=params)
        payload = self._json(response, "POST /v1/test/pip")
        issues = payload.get("issues")
        vulns = issues.get("vulnerabilities") if isinstance(issues, dict) else None
        if not isinstance(payload.get("ok"), bool) or not isinstance(vulns, list):
            raise SnykResponseError("POST /v1/test/pip: no ok/issues.vulnerabilities in the answer")
        return [self._v1_finding(v) for v in vulns]

    async def package_issues(self, ecosystem: str, name: str, version: str) -> list[Finding]:
        """Direct vulnerabilities of one exact package version (REST; needs an organization)."""
        if not self.org_id:
            raise SnykError("the Snyk REST API needs an organization id (org_id)")
        encoded = quote(purl(ecosystem, name, version), safe="")
        path: str | None = f"/rest/orgs/{quote(self.org_id, safe='')}/packages/{encoded}/issues"
        params: dict[str, Any] | None = {"version": REST_VERSION, "limit": PAGE_LIMIT}
        findings: list[Finding] = []
        for _ in range(MAX_PAGES):
            if path is None:
                return findings
            response = await self._send(
                "GET", path, params=params, accept="application/vnd.api+json"
            )
            payload = self._json(response, f"GET issues of {name}@{version}")
            data = payload.get("data")
            if not isinstance(data, list):
                raise SnykResponseError(f"issues of {name}@{version}: no data list in the answer")
            findings.extend(self._rest_finding(item, name, version) for item in data)
            links = payload.get("links")
            path = self._next_path(links.get("next") if isinstance(links, dict) else None)
            params = None  # the next link carries its own query
        raise SnykResponseError(f"issues of {name}@{version}: more than {MAX_PAGES} pages")

    # --- shapes ----------------------------------------------------------------------------

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError as exc:
            raise SnykResponseError(f"{what}: the answer is not JSON") from exc
        if not isinstance(payload, dict):
            raise SnykResponseError(f"{what}: the answer is not a JSON object")
        return payload

    @staticmethod
    def _v1_finding(vuln: object) -> Finding:
        if not isinstance(vuln, dict):
            raise SnykResponseError("POST /v1/test/pip: a vulnerability is not an object")
        try:
            # The v1 spec names it "package"; Snyk's CLI output calls it "packageName".
            name = vuln.get("package") or vuln.get("packageName")
            if not name:
                raise KeyError("package")
            return Finding(
                package=str(name),
                version=str(vuln["version"]),
                severity=_severity(vuln.get("severity")),
                id=str(vuln["id"]),
                title=str(vuln.get("title") or vuln["id"]),
                url=str(vuln["url"]) if vuln.get("url") else None,
                fixed_in=_fixed_in_v1(vuln, str(name)),
                from_path=_strings(vuln.get("from")),
            )
        except KeyError as exc:
            raise SnykResponseError(f"POST /v1/test/pip: a vulnerability has no {exc}") from None

    @staticmethod
    def _rest_finding(item: object, name: str, version: str) -> Finding:
        attributes = item.get("attributes") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(attributes, dict) or "id" not in item:
            raise SnykResponseError(f"issues of {name}@{version}: an issue has no id/attributes")
        fixed: list[str] = []
        for coordinate in attributes.get("coordinates") or []:
            for remedy in (coordinate or {}).get("remedies") or []:
                upgrade = ((remedy or {}).get("details") or {}).get("upgrade_package")
                if upgrade and str(upgrade) not in fixed:
                    fixed.append(str(upgrade))
        issue_id = str(item["id"])
        return Finding(
            package=name,
            version=version,
            severity=_severity(attributes.get("effective_severity_level")),
            id=issue_id,
            title=str(attributes.get("title") or issue_id),
            url=f"https://security.snyk.io/vuln/{quote(issue_id, safe='')}",
            fixed_in=fixed,
            from_path=[f"{name}@{version}"],
        )

    def _next_path(self, link: object) -> str | None:
        if not isinstance(link, str) or not link:
            return None
        parts = urlsplit(link)
        if parts.scheme or parts.netloc:
            # The token goes only to the configured API, whatever a link says.
            base = urlsplit(self.api_url)
            if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
                raise SnykResponseError("a links.next points away from the Snyk API")
            link = parts.path + (f"?{parts.query}" if parts.query else "")
        # REST links are relative to the API's /rest root, with or without it spelled out.
        return (
            link if link.startswith("/rest/") else "/rest" + ("" if link[0] == "/" else "/") + link
        )

    # --- one request, retried within bounds ------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        accept: str = "application/json",
    ) -> httpx.Response:
        policy = self.policy
        headers = {
            "Authorization": f"token {self._token.get_secret_value()}",
            "Accept": accept,
        }
        what = f"{method} {path.split('?', 1)[0]}"
        retries = retry.Retries(policy)
        while True:
            try:
                response = await self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.HTTPError as exc:
                reason = f"{what}: {type(exc).__name__}"
                if (delay := retries.failed()) is None:
                    raise SnykUnavailable(
                        f"{reason} after {retries.failures} attempts ({self.api_url})"
                    ) from None
                logger.info("Snyk %s; retrying in %.2fs", reason, delay)
                await retries.sleep(delay)
                continue
            status = response.status_code
            if status < 400:
                return response
            text = _error_text(response)
            if status >= 500:
                reference = response.headers.get("x-error-reference")
                ref = f" (error reference {reference})" if reference else ""
                if (delay := retries.failed()) is None:
                    raise SnykUnavailable(
                        f"{what}: HTTP {status} after {retries.failures} attempts: {text}{ref}",
                        status=status,
                    )
                logger.info("Snyk %s: HTTP %d%s; retrying in %.2fs", what, status, ref, delay)
                await retries.sleep(delay)
                continue
            if status == 429:
                asked = retry.retry_after_seconds(response)
                delay = policy.delay(retries.limited + 1) if asked is None else asked
                if not retries.may_wait(delay) or delay > policy.max_retry_after:
                    raise SnykRateLimited(
                        f"{what}: rate limited; would wait {delay:.0f}s more after "
                        f"{retries.limited} waits, beyond what this call may "
                        f"({policy.max_wait:.0f}s)",
                        status=status,
                    )
                logger.warning("Snyk rate limit on %s: waiting %.2fs", what, delay)
                await retries.sleep(delay)
                continue
            message = f"{what}: HTTP {status}: {text}"
            if status in (401, 403):
                raise SnykAuthError(message, status=status)
            if status == 404:
                raise SnykNotFoundError(message, status=status)
            raise SnykError(message, status=status)
