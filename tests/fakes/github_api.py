"""A local HTTP server that answers like GitHub's REST API (the parts Gantry uses).

Shapes follow the shared notes on GitHub REST: statuses, check runs (App installations only,
with their documented validation and annotations appended per PATCH), deployments, deployment
statuses, hook deliveries with ``Link`` cursors and redelivery attempts (of repository hooks,
and of the GitHub App's hook at ``/app/hook``, which only the App's JWT may read), the GitHub App
token exchange, git refs (``git/ref/heads/..``, ``git/ref/tags/..``) and annotated tags
(``git/tags/{sha}``), error bodies, rate-limit headers. Faults are queued with ``fail_next``;
every request is recorded.

Usable without pytest (``with FakeGitHub() as gh: ...``) and as the ``github_api`` fixture.
"""

from __future__ import annotations

import functools
import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from blocks.github import GitHubCredentials
from clients.github_auth import AppAuth
from tests.fakes.loopback import LoopbackServer

DOCS = "https://docs.github.com/rest"
COMMIT_STATES = {"error", "failure", "pending", "success"}
DEPLOYMENT_STATES = {"error", "failure", "inactive", "in_progress", "queued", "pending", "success"}
CHECK_STATUSES = {"queued", "in_progress", "completed"}
CHECK_CONCLUSIONS = {
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
}
ANNOTATION_LEVELS = {"notice", "warning", "failure"}
ANNOTATIONS_PER_REQUEST = 50
OUTPUT_LIMIT = 65_535
FaultKind = Literal["server_error", "secondary_rate_limit", "primary_rate_limit"]
# Deliveries are kept per hook: a repository hook's id, or this key for the App's hook.
APP_HOOK: Final = "app"
HookKey = int | Literal["app"]


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
    retry_after: int | None = None
    reset_in: int = 0
    status: int = 500
    path_contains: str = ""


@dataclass
class _State:
    statuses: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    deployment_statuses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    deliveries: dict[HookKey, list[dict[str, Any]]] = field(default_factory=dict)
    # (owner/name, hook id, delivery id) of each redelivery asked of a repository hook
    redelivered: list[tuple[str, int, int]] = field(default_factory=list)
    # delivery ids of each redelivery asked of the App's hook
    app_redelivered: list[int] = field(default_factory=list)
    issued_tokens: dict[str, float] = field(default_factory=dict)
    # (owner/name case-folded, "heads/main" or "tags/v1") -> {"type", "sha"}
    refs: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    # annotated tag objects by their own SHA
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)
    # check runs by id, and the annotations each accumulated over its requests
    check_runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


@functools.cache
def _app_key() -> rsa.RSAPrivateKey:
    # Generating an RSA key costs a noticeable fraction of a second: one per test process.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"message": message, "documentation_url": DOCS, "status": str(status), **extra},
        status_code=status,
    )


def _validation_failed(resource: str, field_name: str, message: str) -> JSONResponse:
    errors = [{"resource": resource, "field": field_name, "code": "custom", "message": message}]
    return _error(422, "Validation Failed", errors=errors)


def _public(run: dict[str, Any]) -> dict[str, Any]:
    """A stored check run as GitHub answers it (without the fake's own bookkeeping)."""
    return {k: v for k, v in run.items() if k != "repository"}


def _annotation_problem(annotation: Any) -> str | None:
    if not isinstance(annotation, dict):
        return "an annotation must be an object"
    for name in ("path", "message"):
        if not isinstance(annotation.get(name), str) or not annotation[name]:
            return f"annotation {name} wasn't supplied."
    lines = [annotation.get("start_line"), annotation.get("end_line")]
    if not all(isinstance(n, int) and n >= 1 for n in lines):
        return "annotation start_line and end_line must be positive integers"
    if annotation.get("annotation_level") not in ANNOTATION_LEVELS:
        return "annotation_level is not included in the list"
    columns = ("start_column", "end_column")
    if any(c in annotation for c in columns) and lines[0] != lines[1]:
        return "start_column and end_column may only be given when start_line equals end_line"
    return None


def _check_run_problem(body: dict[str, Any]) -> JSONResponse | None:
    """GitHub's documented validation of a check run's POST or PATCH body, or None."""
    status = body.get("status")
    if status is not None and status not in CHECK_STATUSES:
        return _validation_failed("CheckRun", "status", "status is not included in the list")
    conclusion = body.get("conclusion")
    if conclusion is not None and conclusion not in CHECK_CONCLUSIONS:
        return _validation_failed(
            "CheckRun", "conclusion", "conclusion is not included in the list"
        )
    if status == "completed" and conclusion is None:
        return _validation_failed(
            "CheckRun", "conclusion", "conclusion wasn't supplied with status completed."
        )
    output = body.get("output")
    if output is None:
        return None
    if not isinstance(output, dict):
        return _validation_failed("CheckRun", "output", "output must be an object")
    for name in ("title", "summary"):
        if not isinstance(output.get(name), str) or not output[name]:
            return _validation_failed("CheckRun", f"output.{name}", f"{name} wasn't supplied.")
    for name in ("summary", "text"):
        if len(output.get(name) or "") > OUTPUT_LIMIT:
            return _validation_failed(
                "CheckRun", f"output.{name}", f"{name} is too long (maximum is 65535 characters)"
            )
    annotations = output.get("annotations") or []
    if not isinstance(annotations, list):
        return _validation_failed("CheckRun", "output.annotations", "must be a list")
    if len(annotations) > ANNOTATIONS_PER_REQUEST:
        return _validation_failed(
            "CheckRun",
            "output.annotations",
            "Only 50 annotations may be created in one request.",
        )
    for annotation in annotations:
        problem = _annotation_problem(annotation)
        if problem is not None:
            return _validation_failed("CheckRun", "output.annotations", problem)
    return None


class FakeGitHub(LoopbackServer):
    """GitHub REST stand-in on 127.0.0.1 with a free port. ``start``/``stop`` or ``with``."""

    def __init__(
        self,
        *,
        token: str = "ghp_fake0123456789abcdefTOKEN",  # noqa: S107 (a fake server's fake token)
        app_id: str = "424242",
        installation_id: int = 777,
        installation_token_ttl: int = 3600,
        status_limit: int = 1000,
    ) -> None:
        self.token = token
        self.app_id = app_id
        self.installation_id = installation_id
        self.installation_token_ttl = installation_token_ttl
        self.status_limit = status_limit
        self.requests: list[RecordedRequest] = []
        self.state = _State()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1001)
        self._lock = threading.Lock()
        key = _app_key()
        self.private_key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self._public_key = key.public_key()
        super().__init__()
        self.app = Starlette(routes=self._routes())

    # --- lifecycle ----------------------------------------------------------------------------

    # --- programming it -----------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        kind: FaultKind = "server_error",
        *,
        retry_after: int | None = None,
        reset_in: int = 0,
        status: int | None = None,
        path_contains: str = "",
    ) -> None:
        """Answer the next ``count`` requests (to paths containing ``path_contains``) with a fault
        instead of their real answer."""
        default_status = {"secondary_rate_limit": 403, "primary_rate_limit": 429}.get(kind, 500)
        with self._lock:
            self._faults.extend(
                Fault(kind, retry_after, reset_in, status or default_status, path_contains)
                for _ in range(count)
            )

    def add_delivery(
        self,
        hook_id: HookKey,
        *,
        guid: str | None = None,
        event: str = "push",
        action: str | None = None,
        delivered_at: datetime | None = None,
        redelivery: bool = False,
        status_code: int = 202,
    ) -> dict[str, Any]:
        """A delivery of repository hook ``hook_id``, or of the App's hook (``APP_HOOK``)."""
        delivery = {
            "id": next(self._ids),
            "guid": guid or f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}",
            "delivered_at": _iso(delivered_at or datetime.now(UTC)),
            "redelivery": redelivery,
            "duration": 0.27,
            "status": "OK" if status_code < 400 else "Invalid HTTP Response: 500",
            "status_code": status_code,
            "event": event,
            "action": action,
            # The App's hook serves every installation; a repository hook belongs to none.
            "installation_id": self.installation_id if hook_id == APP_HOOK else None,
            "repository_id": 1296269,
        }
        with self._lock:
            self.state.deliveries.setdefault(hook_id, []).append(delivery)
        return delivery

    def set_branch(self, full_name: str, branch: str, sha: str) -> None:
        """Make ``branch`` of ``full_name`` point at ``sha``."""
        with self._lock:
            self.state.refs[(full_name.casefold(), f"heads/{branch}")] = {
                "type": "commit",
                "sha": sha,
            }

    def set_tag(self, full_name: str, tag: str, sha: str, *, annotated: bool = False) -> None:
        """A tag of ``full_name`` naming commit ``sha``, lightweight or annotated."""
        target = {"type": "commit", "sha": sha}
        if annotated:
            tag_sha = secrets.token_hex(20)
            with self._lock:
                self.state.tags[tag_sha] = {"tag": tag, "object": target}
            target = {"type": "tag", "sha": tag_sha}
        with self._lock:
            self.state.refs[(full_name.casefold(), f"tags/{tag}")] = target

    def requests_to(self, path_part: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if path_part in r.path and (method is None or r.method == method)
            ]

    def check_runs_for(self, full_name: str, sha: str) -> list[dict[str, Any]]:
        """The check runs created on one commit, oldest first."""
        with self._lock:
            return [
                dict(run)
                for run in self.state.check_runs.values()
                if run["repository"] == full_name.casefold() and run["head_sha"] == sha
            ]

    def annotations_of(self, check_run_id: int) -> list[dict[str, Any]]:
        """Every annotation a check run received, in the order they arrived."""
        with self._lock:
            return list(self.state.annotations.get(check_run_id, []))

    def app_jwt_for(self, private_key_pem: str | None = None, lifetime: int = 540) -> str:
        """A valid App JWT (tests use it to reach the exchange endpoint directly)."""
        now = int(time.time())
        claims = {"iat": now - 60, "exp": now + lifetime, "iss": self.app_id}
        return jwt.encode(claims, private_key_pem or self.private_key_pem, algorithm="RS256")

    def app_auth(self) -> AppAuth:
        """Client-level App credentials for this server's App and installation."""
        return AppAuth(self.app_id, SecretStr(self.private_key_pem), self.installation_id)

    def credentials(
        self, *, app: bool = False, token: str | None = None, ui_url: str | None = None
    ) -> GitHubCredentials:
        """A credentials block for this server: its App (``app``), else a token (its own by
        default); ``ui_url`` is the Prefect UI that statuses and check runs link to."""
        if app:
            return GitHubCredentials(
                api_url=self.url,
                app_id=self.app_id,
                private_key=SecretStr(self.private_key_pem),
                installation_id=self.installation_id,
                ui_url=ui_url,
            )
        return GitHubCredentials(
            api_url=self.url, token=SecretStr(token or self.token), ui_url=ui_url
        )

    # --- the app ------------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        repo = "/repos/{owner}/{repo}"
        hooks = repo + "/hooks/{hook_id:int}/deliveries"
        return [
            Route(repo + "/statuses/{sha}", self._guard(self._create_status), methods=["POST"]),
            Route(
                repo + "/check-runs",
                self._guard(self._create_check_run, installation_only=True),
                methods=["POST"],
            ),
            Route(
                repo + "/check-runs/{check_run_id:int}",
                self._guard(self._update_check_run, installation_only=True),
                methods=["PATCH"],
            ),
            Route(
                repo + "/commits/{ref}/check-runs",
                self._guard(self._list_check_runs),
                methods=["GET"],
            ),
            Route(repo + "/deployments", self._guard(self._create_deployment), methods=["POST"]),
            Route(
                repo + "/deployments/{deployment_id:int}/statuses",
                self._guard(self._create_deployment_status),
                methods=["POST"],
            ),
            Route(hooks, self._guard(self._list_deliveries), methods=["GET"]),
            Route(repo + "/git/ref/{ref:path}", self._guard(self._get_ref), methods=["GET"]),
            Route(repo + "/git/tags/{sha}", self._guard(self._get_tag), methods=["GET"]),
            Route(
                hooks + "/{delivery_id:int}/attempts",
                self._guard(self._redeliver),
                methods=["POST"],
            ),
            Route(
                "/app/hook/deliveries",
                self._guard(self._list_deliveries, app_jwt=True),
                methods=["GET"],
            ),
            Route(
                "/app/hook/deliveries/{delivery_id:int}/attempts",
                self._guard(self._redeliver, app_jwt=True),
                methods=["POST"],
            ),
            Route(
                "/app/installations/{installation_id:int}/access_tokens",
                self._guard(self._access_token, app_jwt=True),
                methods=["POST"],
            ),
        ]

    def _rate_headers(self, remaining: int = 4999, reset_in: int = 3600) -> dict[str, str]:
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-used": str(5000 - remaining),
            "x-ratelimit-reset": str(int(time.time()) + reset_in),
            "x-ratelimit-resource": "core",
        }

    def _guard(
        self, handler: Any, *, app_jwt: bool = False, installation_only: bool = False
    ) -> Any:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                body = await request.json() if raw else None
            except ValueError:
                return _error(400, "Problems parsing JSON")
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
            if fault is not None:
                return self._fault(fault)
            auth = request.headers.get("authorization", "")
            bearer = auth[7:] if auth.lower().startswith("bearer ") else ""
            if app_jwt:
                if not self._jwt_ok(bearer):
                    return _error(401, "A JSON web token could not be decoded")
            elif not self._token_ok(bearer):
                return _error(401, "Bad credentials")
            elif installation_only and secrets.compare_digest(bearer, self.token):
                # Only a GitHub App's installation token may write check runs.
                return _error(403, "You must authenticate via a GitHub App.")
            response: Response = await handler(request, body)
            response.headers.update(self._rate_headers())
            return response

        return endpoint

    def _fault(self, fault: Fault) -> Response:
        if fault.kind == "secondary_rate_limit":
            headers = self._rate_headers()
            if fault.retry_after is not None:
                headers["retry-after"] = str(fault.retry_after)
            response = _error(
                fault.status,
                "You have exceeded a secondary rate limit. Please wait a few minutes before "
                "you try again.",
            )
        elif fault.kind == "primary_rate_limit":
            headers = self._rate_headers(remaining=0, reset_in=fault.reset_in)
            response = _error(fault.status, "API rate limit exceeded for installation.")
        else:
            headers = {}
            response = _error(fault.status, "Server Error")
        response.headers.update(headers)
        return response

    def _token_ok(self, bearer: str) -> bool:
        if bearer and secrets.compare_digest(bearer, self.token):
            return True
        with self._lock:
            expires = self.state.issued_tokens.get(bearer)
        return expires is not None and expires > time.time()

    def _jwt_ok(self, bearer: str) -> bool:
        try:
            claims = jwt.decode(
                bearer,
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
            )
        except jwt.PyJWTError:
            return False
        now = time.time()
        # GitHub refuses a JWT that expires more than 10 minutes ahead.
        return str(claims["iss"]) == self.app_id and claims["exp"] <= now + 600 + 5

    # --- endpoints ----------------------------------------------------------------------------

    async def _create_status(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict) or body.get("state") not in COMMIT_STATES:
            return _validation_failed("Status", "state", "state is not included in the list")
        description = body.get("description")
        if description is not None and len(description) > 140:
            return _validation_failed(
                "Status", "description", "description is too long (maximum is 140 characters)"
            )
        p = request.path_params
        full_name, sha = f"{p['owner']}/{p['repo']}", p["sha"]
        context = body.get("context") or "default"
        now = _iso(datetime.now(UTC))
        with self._lock:
            existing = self.state.statuses.setdefault((full_name, sha), [])
            if sum(1 for s in existing if s["context"] == context) >= self.status_limit:
                return _validation_failed(
                    "Status",
                    "context",
                    "This SHA and context has reached the maximum number of statuses.",
                )
            status = {
                "url": f"{self.url}/repos/{full_name}/statuses/{sha}",
                "id": next(self._ids),
                "node_id": "SC_kwDOfake",
                "state": body["state"],
                "description": description,
                "target_url": body.get("target_url"),
                "context": context,
                "created_at": now,
                "updated_at": now,
                "creator": {"login": "gantry[bot]", "id": 1, "type": "Bot"},
            }
            existing.append(status)
        return JSONResponse(status, status_code=201)

    async def _create_check_run(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            return _validation_failed("CheckRun", "body", "body must be an object")
        for required in ("name", "head_sha"):
            if not isinstance(body.get(required), str) or not body[required]:
                return _validation_failed("CheckRun", required, f"{required} wasn't supplied.")
        problem = _check_run_problem(body)
        if problem is not None:
            return problem
        p = request.path_params
        full_name = f"{p['owner']}/{p['repo']}"
        with self._lock:
            check_run_id = next(self._ids)
            run: dict[str, Any] = {
                "id": check_run_id,
                "repository": full_name.casefold(),
                "name": body["name"],
                "head_sha": body["head_sha"],
                "status": "queued",
                "conclusion": None,
                "started_at": _iso(datetime.now(UTC)),
                "completed_at": None,
                "external_id": "",
                "details_url": None,
                "html_url": f"{self.url}/{full_name}/runs/{check_run_id}",
                "output": {"title": None, "summary": None, "text": None, "annotations_count": 0},
                "app": {"id": int(self.app_id), "slug": "gantry"},
                "pull_requests": [],
            }
            self.state.check_runs[check_run_id] = run
            self.state.annotations[check_run_id] = []
            self._apply(run, body)
            answer = dict(run)
        return JSONResponse(_public(answer), status_code=201)

    async def _update_check_run(self, request: Request, body: Any) -> Response:
        check_run_id = request.path_params["check_run_id"]
        with self._lock:
            known = check_run_id in self.state.check_runs
        if not known:
            return _error(404, "Not Found")
        if not isinstance(body, dict):
            return _validation_failed("CheckRun", "body", "body must be an object")
        problem = _check_run_problem(body)
        if problem is not None:
            return problem
        with self._lock:
            run = self.state.check_runs[check_run_id]
            self._apply(run, body)
            answer = dict(run)
        return JSONResponse(_public(answer))

    def _apply(self, run: dict[str, Any], body: dict[str, Any]) -> None:
        """One accepted POST or PATCH body onto a check run (the lock is held)."""
        for name in ("status", "started_at", "completed_at", "details_url", "external_id"):
            if name in body:
                run[name] = body[name]
        if body.get("conclusion") is not None:
            # GitHub completes a check run given a conclusion.
            run["conclusion"] = body["conclusion"]
            run["status"] = "completed"
            run["completed_at"] = run["completed_at"] or _iso(datetime.now(UTC))
        output = body.get("output")
        if isinstance(output, dict):
            for name in ("title", "summary", "text"):
                if name in output:
                    run["output"][name] = output[name]
            added = list(output.get("annotations") or [])
            self.state.annotations[run["id"]].extend(added)
            run["output"]["annotations_count"] = len(self.state.annotations[run["id"]])

    async def _list_check_runs(self, request: Request, body: Any) -> Response:
        p = request.path_params
        full_name, ref = f"{p['owner']}/{p['repo']}", p["ref"]
        query = request.query_params
        try:
            per_page = min(int(query.get("per_page", "30")), 100)
            page = max(int(query.get("page", "1")), 1)
        except ValueError:
            return _error(400, "per_page and page must be integers")
        wanted_filter = query.get("filter", "latest")
        if wanted_filter not in ("latest", "all"):
            return _validation_failed("CheckRun", "filter", "filter is not latest or all")
        runs = self.check_runs_for(full_name, ref)
        if "check_name" in query:
            runs = [r for r in runs if r["name"] == query["check_name"]]
        if "status" in query:
            runs = [r for r in runs if r["status"] == query["status"]]
        if wanted_filter == "latest":
            newest: dict[str, dict[str, Any]] = {}
            for run in runs:
                newest[run["name"]] = run  # oldest first: the last of each name wins
            runs = list(newest.values())
        runs.sort(key=lambda r: r["id"], reverse=True)
        start = (page - 1) * per_page
        return JSONResponse(
            {
                "total_count": len(runs),
                "check_runs": [_public(r) for r in runs[start : start + per_page]],
            }
        )

    async def _create_deployment(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict) or not body.get("ref"):
            return _validation_failed("Deployment", "ref", "ref is missing")
        p = request.path_params
        full_name = f"{p['owner']}/{p['repo']}"
        environment = body.get("environment") or "production"
        now = _iso(datetime.now(UTC))
        with self._lock:
            deployment_id = next(self._ids)
            url = f"{self.url}/repos/{full_name}/deployments/{deployment_id}"
            deployment = {
                "url": url,
                "id": deployment_id,
                "node_id": "DE_kwDOfake",
                "sha": body["ref"] if len(body["ref"]) == 40 else "a" * 40,
                "ref": body["ref"],
                "task": body.get("task") or "deploy",
                "payload": body.get("payload") or {},
                "original_environment": environment,
                "environment": environment,
                "description": body.get("description"),
                "creator": {"login": "gantry[bot]", "id": 1, "type": "Bot"},
                "created_at": now,
                "updated_at": now,
                "statuses_url": f"{url}/statuses",
                "repository_url": f"{self.url}/repos/{full_name}",
                "transient_environment": bool(body.get("transient_environment", False)),
                "production_environment": bool(
                    body.get("production_environment", environment == "production")
                ),
            }
            self.state.deployments[deployment_id] = deployment
        return JSONResponse(deployment, status_code=201)

    async def _create_deployment_status(self, request: Request, body: Any) -> Response:
        deployment_id = request.path_params["deployment_id"]
        with self._lock:
            deployment = self.state.deployments.get(deployment_id)
        if deployment is None:
            return _error(404, "Not Found")
        if not isinstance(body, dict) or body.get("state") not in DEPLOYMENT_STATES:
            return _validation_failed(
                "DeploymentStatus", "state", "state is not included in the list"
            )
        description = body.get("description") or ""
        if len(description) > 140:
            return _validation_failed(
                "DeploymentStatus",
                "description",
                "description is too long (maximum is 140 characters)",
            )
        now = _iso(datetime.now(UTC))
        with self._lock:
            status = {
                "url": f"{deployment['url']}/statuses/{next(self._ids)}",
                "id": next(self._ids),
                "state": body["state"],
                "description": description,
                "environment": body.get("environment") or deployment["environment"],
                "target_url": body.get("log_url") or "",
                "log_url": body.get("log_url") or "",
                "environment_url": body.get("environment_url") or "",
                "created_at": now,
                "updated_at": now,
                "deployment_url": deployment["url"],
                "repository_url": deployment["repository_url"],
            }
            self.state.deployment_statuses.setdefault(deployment_id, []).append(status)
        return JSONResponse(status, status_code=201)

    async def _list_deliveries(self, request: Request, body: Any) -> Response:
        hook_id: HookKey = request.path_params.get("hook_id", APP_HOOK)
        try:
            per_page = min(int(request.query_params.get("per_page", "30")), 100)
        except ValueError:
            return _error(400, "per_page must be an integer")
        cursor = request.query_params.get("cursor")
        with self._lock:
            items = sorted(
                self.state.deliveries.get(hook_id, []),
                key=lambda d: (d["delivered_at"], d["id"]),
                reverse=True,
            )
        if cursor:
            try:
                after = int(cursor.removeprefix("v1_"))
            except ValueError:
                return _error(400, "Invalid cursor")
            ids = [d["id"] for d in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page, rest = items[:per_page], items[per_page:]
        response = JSONResponse(page)
        if rest:
            next_url = request.url.include_query_params(
                per_page=per_page, cursor=f"v1_{page[-1]['id']}"
            )
            response.headers["link"] = f'<{next_url}>; rel="next"'
        return response

    async def _redeliver(self, request: Request, body: Any) -> Response:
        p = request.path_params
        hook_id: HookKey = p.get("hook_id", APP_HOOK)
        delivery_id = p["delivery_id"]
        with self._lock:
            original = next(
                (d for d in self.state.deliveries.get(hook_id, []) if d["id"] == delivery_id),
                None,
            )
        if original is None:
            return _error(404, "Not Found")
        with self._lock:
            if isinstance(hook_id, int):
                self.state.redelivered.append((f"{p['owner']}/{p['repo']}", hook_id, delivery_id))
            else:
                self.state.app_redelivered.append(delivery_id)
        self.add_delivery(
            hook_id,
            guid=original["guid"],
            event=original["event"],
            action=original["action"],
            redelivery=True,
        )
        return JSONResponse({}, status_code=202)

    async def _get_ref(self, request: Request, body: Any) -> Response:
        p = request.path_params
        full_name, ref = f"{p['owner']}/{p['repo']}", p["ref"]
        with self._lock:
            target = self.state.refs.get((full_name.casefold(), ref))
        if target is None:
            return _error(404, "Not Found")
        kind = "tags" if target["type"] == "tag" else "commits"
        api = f"{self.url}/repos/{full_name}/git"
        return JSONResponse(
            {
                "ref": f"refs/{ref}",
                "node_id": "REF_kwDOfake",
                "url": f"{api}/refs/{ref}",
                "object": {**target, "url": f"{api}/{kind}/{target['sha']}"},
            }
        )

    async def _get_tag(self, request: Request, body: Any) -> Response:
        p = request.path_params
        full_name, sha = f"{p['owner']}/{p['repo']}", p["sha"]
        with self._lock:
            tag = self.state.tags.get(sha)
        if tag is None:
            return _error(404, "Not Found")
        api = f"{self.url}/repos/{full_name}/git"
        target = tag["object"]
        return JSONResponse(
            {
                "node_id": "TAG_kwDOfake",
                "tag": tag["tag"],
                "sha": sha,
                "url": f"{api}/tags/{sha}",
                "message": f"release {tag['tag']}",
                "tagger": {
                    "name": "Releaser",
                    "email": "releaser@example.com",
                    "date": _iso(datetime.now(UTC)),
                },
                "object": {**target, "url": f"{api}/commits/{target['sha']}"},
                "verification": {"verified": False, "reason": "unsigned"},
            }
        )

    async def _access_token(self, request: Request, body: Any) -> Response:
        if request.path_params["installation_id"] != self.installation_id:
            return _error(404, "Not Found")
        token = "ghs_" + secrets.token_urlsafe(27).replace("-", "A").replace("_", "B")
        expires = datetime.now(UTC) + timedelta(seconds=self.installation_token_ttl)
        with self._lock:
            self.state.issued_tokens[token] = expires.timestamp()
        return JSONResponse(
            {
                "token": token,
                "expires_at": _iso(expires),
                "permissions": {"statuses": "write", "deployments": "write", "checks": "write"},
                "repository_selection": "selected",
            },
            status_code=201,
        )


@pytest.fixture
def github_api() -> Iterator[FakeGitHub]:
    """A running fake GitHub, stopped after the test."""
    with FakeGitHub() as fake:
        yield fake
