"""A local HTTP server that answers like Snyk's API (the parts Gantry uses).

Shapes follow the shared notes on Snyk: the v1 pip test (``ok``, ``issues.vulnerabilities``
with their documented fields) and the REST issues of one package version (JSON:API, paged with
``links.next``), their error bodies, 429 with Retry-After and 5xx with ``x-error-reference``.
Vulnerabilities are programmed per package version with ``add_vulnerability``; faults are
queued with ``fail_next``; every request is recorded.

Usable without pytest (``with FakeSnyk() as snyk: ...``) and as the ``snyk_api`` fixture.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlencode

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import LoopbackServer

FaultKind = Literal["rate_limit", "server_error", "malformed", "unauthorised", "slow"]
JSONAPI = "application/vnd.api+json"
_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?"
)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    json: Any


@dataclass
class Fault:
    kind: FaultKind
    retry_after: str | None = None
    status: int = 500
    path_contains: str = ""
    # For "slow": seconds before the real answer.
    delay: float = 0.0


@dataclass
class Vulnerability:
    package: str
    version: str
    severity: str
    id: str
    title: str
    fixed_in: list[str] = field(default_factory=list)
    cve: list[str] = field(default_factory=list)


class FakeSnyk(LoopbackServer):
    """Snyk API stand-in on 127.0.0.1 with a free port. ``start``/``stop`` or ``with``."""

    def __init__(
        self,
        *,
        token: str = "snyk-fake-0123456789-TOKEN",  # noqa: S107 (a fake server's fake token)
        org_id: str = "11111111-2222-3333-4444-555555555555",
        page_size: int = 2,
    ) -> None:
        self.token = token
        self.org_id = org_id
        self.page_size = page_size
        self.requests: list[RecordedRequest] = []
        self.vulnerabilities: list[Vulnerability] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        super().__init__()
        self.app = Starlette(
            routes=[
                Route("/v1/test/pip", self._guard(self._test_pip, rest=False), methods=["POST"]),
                Route(
                    "/rest/orgs/{org_id}/packages/{purl:path}/issues",
                    self._guard(self._issues, rest=True),
                    methods=["GET"],
                ),
            ]
        )

    # --- lifecycle ----------------------------------------------------------------------------

    # --- programming it -----------------------------------------------------------------------

    def add_vulnerability(
        self,
        package: str,
        version: str,
        severity: str = "high",
        *,
        id: str | None = None,
        title: str = "Arbitrary Code Execution",
        fixed_in: list[str] | None = None,
    ) -> Vulnerability:
        vuln = Vulnerability(
            package=package,
            version=version,
            severity=severity,
            id=id or f"SNYK-PYTHON-{_normal(package).upper()}-{len(self.vulnerabilities) + 1000}",
            title=title,
            fixed_in=fixed_in or [],
            cve=[f"CVE-2024-{len(self.vulnerabilities) + 10000}"],
        )
        with self._lock:
            self.vulnerabilities.append(vuln)
        return vuln

    def fail_next(
        self,
        count: int,
        kind: FaultKind = "server_error",
        *,
        retry_after: str | None = None,
        status: int | None = None,
        path_contains: str = "",
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``count`` requests (to paths containing ``path_contains``) with a
        fault instead of their real answer ("slow": the real answer, ``delay`` seconds late)."""
        default = {"rate_limit": 429, "unauthorised": 401, "malformed": 200}.get(kind, 500)
        with self._lock:
            self._faults.extend(
                Fault(kind, retry_after, status or default, path_contains, delay)
                for _ in range(count)
            )

    def requests_to(self, path_part: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if path_part in r.path]

    def _vulns_of(self, name: str, version: str | None) -> list[Vulnerability]:
        with self._lock:
            return [
                v
                for v in self.vulnerabilities
                if _normal(v.package) == _normal(name) and version in (None, v.version)
            ]

    # --- the app ------------------------------------------------------------------------------

    def _guard(self, handler: Any, *, rest: bool) -> Any:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                body = await request.json() if raw else None
            except ValueError:
                body = None
            with self._lock:
                self.requests.append(
                    RecordedRequest(
                        request.method,
                        request.url.path,
                        dict(request.query_params),
                        {k.lower(): v for k, v in request.headers.items()},
                        body,
                    )
                )
                fault = next((f for f in self._faults if f.path_contains in request.url.path), None)
                if fault is not None:
                    self._faults.remove(fault)
            if fault is not None and fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            elif fault is not None:
                return self._fault(fault, rest)
            if request.headers.get("authorization") != f"token {self.token}":
                return self._error(401, "Not authorised", rest)
            response: Response = await handler(request, body)
            return response

        return endpoint

    def _error(self, status: int, message: str, rest: bool) -> JSONResponse:
        if rest:
            return JSONResponse(
                {
                    "jsonapi": {"version": "1.0"},
                    "errors": [{"id": str(uuid.uuid4()), "status": str(status), "detail": message}],
                },
                status_code=status,
                media_type=JSONAPI,
            )
        return JSONResponse(
            {"code": status, "error": message, "message": message}, status_code=status
        )

    def _fault(self, fault: Fault, rest: bool) -> Response:
        if fault.kind == "malformed":
            return Response(
                "<html>upstream hiccup", status_code=fault.status, media_type="text/html"
            )
        if fault.kind == "unauthorised":
            return self._error(fault.status, "Not authorised", rest)
        if fault.kind == "rate_limit":
            response = self._error(fault.status, "Too many requests", rest)
            if fault.retry_after is not None:
                response.headers["retry-after"] = fault.retry_after
            return response
        response = self._error(fault.status, "Internal server error", rest)
        response.headers["x-error-reference"] = str(uuid.uuid4())
        return response

    async def _test_pip(self, request: Request, body: Any) -> Response:
        files = body.get("files") if isinstance(body, dict) else None
        target = files.get("target") if isinstance(files, dict) else None
        contents = target.get("contents") if isinstance(target, dict) else None
        if not isinstance(contents, str) or body.get("encoding") not in ("plain", "base64"):
            return self._error(400, "Invalid request body", rest=False)
        if body["encoding"] == "base64":
            contents = base64.b64decode(contents).decode()
        found: list[dict[str, Any]] = []
        count = 0
        for line in contents.splitlines():
            match = _REQUIREMENT.match(line)
            if not match:
                continue
            count += 1
            name, version = match.group(1), match.group(2)
            for v in self._vulns_of(name, version):
                found.append(self._v1_vuln(v, name))
        org = request.query_params.get("org") or self.org_id
        return JSONResponse(
            {
                "ok": not found,
                "issues": {"vulnerabilities": found, "licenses": []},
                "dependencyCount": count,
                "org": {"name": "acme", "id": org},
                "licensesPolicy": None,
                "packageManager": "pip",
            }
        )

    @staticmethod
    def _v1_vuln(v: Vulnerability, requested: str) -> dict[str, Any]:
        return {
            "id": v.id,
            "url": f"https://security.snyk.io/vuln/{v.id}",
            "title": v.title,
            "package": v.package,
            "version": v.version,
            "from": [f"{requested}@{v.version}"],
            "severity": v.severity,
            "exploitMaturity": "no-known-exploit",
            "semver": {"vulnerable": [f"<{v.fixed_in[0]}" if v.fixed_in else "*"]},
            "identifiers": {"CVE": v.cve, "CWE": ["CWE-94"]},
            "CVSSv3": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
            "cvssScore": 9.8,
            "isUpgradable": bool(v.fixed_in),
            "isPatchable": False,
            "upgradePath": [False, f"{v.package}@{v.fixed_in[0]}"] if v.fixed_in else [],
            **({"fixedIn": v.fixed_in} if v.fixed_in else {}),
        }

    async def _issues(self, request: Request, body: Any) -> Response:
        if not request.query_params.get("version"):
            return self._error(400, "the version query parameter is required", rest=True)
        org_id = request.path_params["org_id"]
        if org_id != self.org_id:
            return self._error(404, "Not Found", rest=True)
        purl = unquote(request.path_params["purl"])
        match = re.fullmatch(r"pkg:pypi/([^@]+)@(.+)", purl)
        if not match:
            return self._error(400, f"invalid purl {purl!r}", rest=True)
        name, version = match.group(1), match.group(2)
        vulns = self._vulns_of(name, version)
        limit = min(int(request.query_params.get("limit", "1000")), self.page_size)
        offset = int(request.query_params.get("offset", "0"))
        page = vulns[offset : offset + limit]
        # The raw path keeps the purl percent-encoded, as Snyk's own links do.
        quoted = request.scope.get("raw_path", b"").decode() or request.url.path
        self_link = f"{quoted}?{urlencode({'version': request.query_params['version']})}"
        links: dict[str, str] = {"self": self_link}
        if offset + limit < len(vulns):
            query = {"version": request.query_params["version"], "limit": limit}
            links["next"] = f"{quoted}?{urlencode({**query, 'offset': offset + limit})}"
        return JSONResponse(
            {
                "jsonapi": {"version": "1.0"},
                "data": [self._rest_issue(v) for v in page],
                "links": links,
                "meta": {"package": {"name": name, "version": version, "url": purl}},
            },
            media_type=JSONAPI,
        )

    @staticmethod
    def _rest_issue(v: Vulnerability) -> dict[str, Any]:
        return {
            "id": v.id,
            "type": "issue",
            "attributes": {
                "key": v.id,
                "title": v.title,
                "type": "package_vulnerability",
                "description": f"{v.package} is vulnerable to {v.title}.",
                "effective_severity_level": v.severity,
                "problems": [{"id": cve, "source": "NVD"} for cve in v.cve],
                "severities": [{"level": v.severity, "score": 9.8, "vector": "CVSS:3.1/AV:N"}],
                "coordinates": [
                    {"remedies": [{"details": {"upgrade_package": f}} for f in v.fixed_in]}
                ],
            },
        }


@pytest.fixture
def snyk_api() -> Iterator[FakeSnyk]:
    """A running fake Snyk, stopped after the test."""
    with FakeSnyk() as fake:
        yield fake
