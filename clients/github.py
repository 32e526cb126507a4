"""Gantry's GitHub REST client: commit statuses, check runs, deployments, webhook deliveries
(of a repository's hook or the GitHub App's), git refs.

Every error is a ``GitHubError`` (see ``clients.github_errors``); no message carries a token.
Retry and rate-limit bounds are in ``clients.github_http``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from blocks.github import DEFAULT_API_URL, GitHubCredentials
from clients.github_auth import AppAuth, GitHubAuth, TokenAuth
from clients.github_checks import ANNOTATIONS_PER_REQUEST, chunked, cut_output
from clients.github_errors import (
    GitHubAuthError,
    GitHubConflictError,
    GitHubNotFoundError,
    GitHubProtocolError,
)
from clients.github_http import API_VERSION, GitHubHTTP, RetryPolicy, error_message
from clients.github_models import (
    CheckAnnotation,
    CheckConclusion,
    CheckOutput,
    CheckRun,
    CheckRunList,
    CheckRunStatus,
    CommitState,
    CommitStatus,
    Deployment,
    DeploymentState,
    DeploymentStatus,
    HookDelivery,
    InstallationToken,
)

__all__ = [
    "API_VERSION",
    "AppHook",
    "GitHubClient",
    "HookSource",
    "RepoHook",
    "RetryPolicy",
    "truncate",
]

logger = logging.getLogger("gantry.github")

DESCRIPTION_LIMIT = 140
# GitHub documents no limit for a check run's title; it is shown on one line, so kept short.
CHECK_TITLE_LIMIT = 200
MAX_PER_PAGE = 100
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# Annotated tags may point at tags; GitHub allows chains, nobody needs long ones.
MAX_TAG_DEPTH = 5


class GitObject(BaseModel):
    """What a ref or an annotated tag points at: ``{type, sha}`` (commit, tag, tree, blob)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str
    sha: str


class GitRef(BaseModel):
    """``GET /repos/{owner}/{repo}/git/ref/{ref}``: ``{ref, node_id, url, object}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ref: str
    object: GitObject


class GitTag(BaseModel):
    """``GET /repos/{owner}/{repo}/git/tags/{tag_sha}``: an annotated tag and its target."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    sha: str
    tag: str | None = None
    object: GitObject


M = TypeVar(
    "M",
    CheckRun,
    CheckRunList,
    CommitStatus,
    Deployment,
    DeploymentStatus,
    HookDelivery,
    InstallationToken,
    GitRef,
    GitTag,
)


def truncate(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """``text`` cut to GitHub's description limit, marking the cut with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC as GitHub writes it (``2026-01-02T03:04:05Z``); naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _output_body(output: CheckOutput, annotations: Sequence[CheckAnnotation]) -> dict[str, Any]:
    # title and summary go with every request that carries annotations: GitHub requires both
    # in any ``output`` object.
    body: dict[str, Any] = {
        "title": truncate(output.title, CHECK_TITLE_LIMIT),
        "summary": cut_output(output.summary),
    }
    if output.text:
        body["text"] = cut_output(output.text)
    if annotations:
        body["annotations"] = [a.payload() for a in annotations]
    return body


def _repo_path(repo_full_name: str) -> str:
    if not _REPO_RE.match(repo_full_name) or ".." in repo_full_name:
        raise ValueError(f"not an owner/name repository: {repo_full_name!r}")
    return f"/repos/{repo_full_name}"


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


@dataclass(frozen=True)
class RepoHook:
    """A repository's webhook: its deliveries at ``/repos/{owner}/{repo}/hooks/{id}``."""

    repo: str
    hook_id: int
    as_app: ClassVar[bool] = False

    @property
    def deliveries_path(self) -> str:
        return f"{_repo_path(self.repo)}/hooks/{_seg(self.hook_id)}/deliveries"

    def __str__(self) -> str:
        return f"hook {self.hook_id} of {self.repo}"


@dataclass(frozen=True)
class AppHook:
    """The GitHub App's webhook: its deliveries at ``/app/hook``, read as the App (its JWT)."""

    as_app: ClassVar[bool] = True

    @property
    def deliveries_path(self) -> str:
        return "/app/hook/deliveries"

    def __str__(self) -> str:
        return "the GitHub App's webhook"


# Where deliveries come from: one repository's hook, or the App's hook for all installations.
HookSource = RepoHook | AppHook


class GitHubClient:
    """Async client for the REST endpoints Gantry uses. Use ``async with`` or call ``aclose``."""

    def __init__(
        self,
        auth: GitHubAuth,
        *,
        api_url: str = DEFAULT_API_URL,
        policy: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._auth = auth
        self._http = GitHubHTTP(api_url, policy=policy, timeout=timeout, transport=transport)

    @property
    def api_url(self) -> str:
        return self._http.api_url

    @property
    def policy(self) -> RetryPolicy:
        return self._http.policy

    @classmethod
    def from_credentials(
        cls, credentials: GitHubCredentials, *, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> GitHubClient:
        auth: GitHubAuth
        if credentials.token is not None:
            auth = TokenAuth(credentials.token)
        else:
            if not (credentials.app_id and credentials.private_key and credentials.installation_id):
                raise ValueError("GitHub credentials have neither a token nor a complete App")
            auth = AppAuth(credentials.app_id, credentials.private_key, credentials.installation_id)
        return cls(auth, api_url=credentials.api_url, policy=policy, **kwargs)

    def __repr__(self) -> str:
        return f"GitHubClient(api_url={self.api_url!r}, auth={self._auth!r})"

    async def __aenter__(self) -> Self:
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

    # --- endpoints -------------------------------------------------------------------------

    async def create_commit_status(
        self,
        repo_full_name: str,
        sha: str,
        state: CommitState,
        context: str,
        description: str | None = None,
        target_url: str | None = None,
    ) -> CommitStatus:
        body: dict[str, Any] = {"state": state, "context": context}
        if description is not None:
            body["description"] = truncate(description)
        if target_url:
            body["target_url"] = target_url
        path = f"{_repo_path(repo_full_name)}/statuses/{_seg(sha)}"
        return self._parse(CommitStatus, await self._request("POST", path, json=body))

    async def create_check_run(
        self,
        repo_full_name: str,
        head_sha: str,
        name: str,
        *,
        status: CheckRunStatus = "in_progress",
        conclusion: CheckConclusion | None = None,
        started_at: datetime | None = None,
        completed_at: datetime | None = None,
        details_url: str | None = None,
        external_id: str | None = None,
        output: CheckOutput | None = None,
    ) -> CheckRun:
        """``POST .../check-runs`` (GitHub App installations only: a token gets 403).

        The first 50 annotations go with the creation, the rest in further PATCHes of 50.
        """
        if (status == "completed") != (conclusion is not None):
            raise ValueError("a conclusion is given exactly when the check run is completed")
        if not _SHA_RE.match(head_sha):
            raise ValueError(f"not a commit SHA: {head_sha!r}")
        body: dict[str, Any] = {"name": name, "head_sha": head_sha, "status": status}
        if conclusion is not None:
            body["conclusion"] = conclusion
        if started_at is not None:
            body["started_at"] = _iso(started_at)
        if completed_at is not None:
            body["completed_at"] = _iso(completed_at)
        if details_url:
            body["details_url"] = details_url
        if external_id:
            body["external_id"] = external_id
        rest: Sequence[CheckAnnotation] = ()
        if output is not None:
            first, rest = self._split(output.annotations)
            body["output"] = _output_body(output, first)
        path = f"{_repo_path(repo_full_name)}/check-runs"
        check_run = self._parse(CheckRun, await self._request("POST", path, json=body))
        if output is not None and rest:
            await self._add_annotations(repo_full_name, check_run.id, output, rest)
        return check_run

    async def update_check_run(
        self,
        repo_full_name: str,
        check_run_id: int,
        *,
        status: CheckRunStatus | None = None,
        conclusion: CheckConclusion | None = None,
        completed_at: datetime | None = None,
        details_url: str | None = None,
        output: CheckOutput | None = None,
    ) -> CheckRun:
        """``PATCH .../check-runs/{id}``: the first 50 annotations with the update (so the
        conclusion never waits for them), the rest appended by further PATCHes of 50."""
        if conclusion is not None and status not in (None, "completed"):
            raise ValueError("a conclusion completes the check run")
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status
        if conclusion is not None:
            body["conclusion"] = conclusion
        if completed_at is not None:
            body["completed_at"] = _iso(completed_at)
        if details_url:
            body["details_url"] = details_url
        rest: Sequence[CheckAnnotation] = ()
        if output is not None:
            first, rest = self._split(output.annotations)
            body["output"] = _output_body(output, first)
        check_run = await self._patch_check_run(repo_full_name, check_run_id, body)
        if output is not None and rest:
            check_run = await self._add_annotations(repo_full_name, check_run_id, output, rest)
        return check_run

    async def list_check_runs_for_ref(
        self,
        repo_full_name: str,
        ref: str,
        *,
        check_name: str | None = None,
        status: CheckRunStatus | None = None,
        latest_only: bool = True,
        max_pages: int = 10,
    ) -> list[CheckRun]:
        """``GET .../commits/{ref}/check-runs`` (``{total_count, check_runs[]}``), every page.

        ``latest_only`` is GitHub's ``filter=latest`` (the newest run of each name); False
        (``filter=all``) also lists runs a newer one of the same name replaced.
        """
        path = f"{_repo_path(repo_full_name)}/commits/{_seg(ref)}/check-runs"
        params: dict[str, Any] = {
            "filter": "latest" if latest_only else "all",
            "per_page": MAX_PER_PAGE,
        }
        if check_name is not None:
            params["check_name"] = check_name
        if status is not None:
            params["status"] = status
        found: list[CheckRun] = []
        for page in range(1, max_pages + 1):
            listing = self._parse(
                CheckRunList, await self._request("GET", path, params={**params, "page": page})
            )
            found.extend(listing.check_runs)
            if not listing.check_runs or len(found) >= listing.total_count:
                return found
        logger.warning("stopped listing check runs of %s after %d pages", ref, max_pages)
        return found

    @staticmethod
    def _split(
        annotations: Sequence[CheckAnnotation],
    ) -> tuple[Sequence[CheckAnnotation], Sequence[CheckAnnotation]]:
        return annotations[:ANNOTATIONS_PER_REQUEST], annotations[ANNOTATIONS_PER_REQUEST:]

    async def _add_annotations(
        self,
        repo_full_name: str,
        check_run_id: int,
        output: CheckOutput,
        annotations: Sequence[CheckAnnotation],
    ) -> CheckRun:
        # GitHub appends the annotations of each PATCH to those the check run already has.
        check_run: CheckRun | None = None
        for chunk in chunked(annotations, ANNOTATIONS_PER_REQUEST):
            body = {"output": _output_body(output, chunk)}
            check_run = await self._patch_check_run(repo_full_name, check_run_id, body)
        assert check_run is not None  # annotations is never empty here
        return check_run

    async def _patch_check_run(
        self, repo_full_name: str, check_run_id: int, body: dict[str, Any]
    ) -> CheckRun:
        path = f"{_repo_path(repo_full_name)}/check-runs/{_seg(check_run_id)}"
        return self._parse(CheckRun, await self._request("PATCH", path, json=body))

    async def create_deployment(
        self,
        repo_full_name: str,
        ref: str,
        environment: str,
        payload: dict[str, Any] | None = None,
        description: str | None = None,
        production_environment: bool | None = None,
        transient_environment: bool | None = None,
    ) -> Deployment:
        body: dict[str, Any] = {
            "ref": ref,
            "task": "deploy",
            "environment": environment,
            # Gantry deploys exact commits: never let GitHub merge the default branch in,
            # and Gantry's own stages already gated this ref.
            "auto_merge": False,
            "required_contexts": [],
            "payload": payload or {},
        }
        if description is not None:
            body["description"] = truncate(description)
        if production_environment is not None:
            body["production_environment"] = production_environment
        if transient_environment is not None:
            body["transient_environment"] = transient_environment
        path = f"{_repo_path(repo_full_name)}/deployments"
        response = await self._request("POST", path, json=body)
        if response.status_code == 202:
            message, doc, _ = error_message(response)
            raise GitHubConflictError(
                f"POST {path}: no deployment created: {message}",
                status=202,
                documentation_url=doc,
            )
        return self._parse(Deployment, response)

    async def create_deployment_status(
        self,
        repo_full_name: str,
        deployment_id: int,
        state: DeploymentState,
        environment_url: str | None = None,
        log_url: str | None = None,
        description: str | None = None,
    ) -> DeploymentStatus:
        body: dict[str, Any] = {"state": state}
        if environment_url:
            body["environment_url"] = environment_url
        if log_url:
            body["log_url"] = log_url
        if description is not None:
            body["description"] = truncate(description)
        path = f"{_repo_path(repo_full_name)}/deployments/{_seg(deployment_id)}/statuses"
        return self._parse(DeploymentStatus, await self._request("POST", path, json=body))

    async def list_hook_deliveries(
        self,
        hook: HookSource,
        per_page: int = MAX_PER_PAGE,
        since: datetime | None = None,
        max_pages: int = 100,
    ) -> list[HookDelivery]:
        """Deliveries of a repository hook or the App's hook, newest first, following the
        ``Link`` cursor; stops at ``since``. The App's hook is read with the App's JWT."""
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        path = hook.deliveries_path
        params: dict[str, str | int] = {"per_page": max(1, min(per_page, MAX_PER_PAGE))}
        found: list[HookDelivery] = []
        for _ in range(max_pages):
            response = await self._request("GET", path, params=params, as_app=hook.as_app)
            items = self._json(response)
            if not isinstance(items, list):
                raise GitHubProtocolError(f"GET {path}: expected a list of deliveries")
            page = [self._validate(HookDelivery, item, path) for item in items]
            older = since is not None and any(d.delivered_at < since for d in page)
            found.extend(d for d in page if since is None or d.delivered_at >= since)
            cursor = self._next_cursor(response)
            if older or cursor is None:
                return found
            params = {**params, "cursor": cursor}
        logger.warning("stopped listing deliveries of %s after %d pages", hook, max_pages)
        return found

    async def redeliver(self, hook: HookSource, delivery_id: int) -> None:
        """Ask GitHub to attempt a delivery again (202); it keeps the delivery's GUID."""
        path = f"{hook.deliveries_path}/{_seg(delivery_id)}/attempts"
        await self._request("POST", path, as_app=hook.as_app)

    async def branch_head(self, repo_full_name: str, branch: str) -> str:
        """The commit SHA the branch points at now (``GET .../git/ref/heads/{branch}``)."""
        ref = await self._ref(repo_full_name, f"heads/{branch}")
        if ref.object.type != "commit":
            raise GitHubProtocolError(f"branch {branch!r} points at a {ref.object.type}")
        return self._sha(ref.object.sha)

    async def tag_commit(self, repo_full_name: str, tag: str) -> str:
        """The commit a tag names, annotated tags peeled (``.../git/ref/tags/{tag}``, then
        ``.../git/tags/{sha}`` for each annotated tag on the way)."""
        target = (await self._ref(repo_full_name, f"tags/{tag}")).object
        for _ in range(MAX_TAG_DEPTH):
            if target.type == "commit":
                return self._sha(target.sha)
            if target.type != "tag":
                raise GitHubProtocolError(f"tag {tag!r} names a {target.type}, not a commit")
            path = f"{_repo_path(repo_full_name)}/git/tags/{_seg(self._sha(target.sha))}"
            target = self._parse(GitTag, await self._request("GET", path)).object
        raise GitHubProtocolError(f"tag {tag!r} is a chain of more than {MAX_TAG_DEPTH} tags")

    async def _ref(self, repo_full_name: str, ref: str) -> GitRef:
        if not ref or ref.startswith("/") or ".." in ref:
            raise ValueError(f"not a git ref: {ref!r}")
        # Slashes stay: GitHub takes ``heads/feature/x`` as one ref.
        path = f"{_repo_path(repo_full_name)}/git/ref/{quote(ref, safe='/')}"
        return self._parse(GitRef, await self._request("GET", path))

    @staticmethod
    def _sha(sha: str) -> str:
        if not _SHA_RE.match(sha):
            raise GitHubProtocolError("GitHub answered an object name that is not a SHA")
        return sha

    # --- plumbing --------------------------------------------------------------------------

    @staticmethod
    def _next_cursor(response: httpx.Response) -> str | None:
        # Only the cursor is taken from the Link URL: the token is never sent to a host
        # other than api_url, whatever the header says.
        url = response.links.get("next", {}).get("url")
        if not url:
            return None
        cursor = parse_qs(urlsplit(url).query).get("cursor")
        return cursor[0] if cursor else None

    async def _exchange(self, installation_id: int, app_jwt: SecretStr) -> InstallationToken:
        path = f"/app/installations/{_seg(installation_id)}/access_tokens"
        try:
            response = await self._http.send("POST", path, app_jwt)
        except GitHubAuthError as exc:
            raise GitHubAuthError(
                f"GitHub App installation token exchange refused: {exc.message}",
                status=exc.status,
                documentation_url=exc.documentation_url,
            ) from exc
        except GitHubNotFoundError as exc:
            raise GitHubAuthError(
                f"GitHub App installation {installation_id} not found for this app",
                status=exc.status,
            ) from exc
        token = self._parse(InstallationToken, response)
        if token.expires_at.tzinfo is None:
            token = token.model_copy(update={"expires_at": token.expires_at.replace(tzinfo=UTC)})
        return token

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        as_app: bool = False,
    ) -> httpx.Response:
        if as_app:
            # The App's own endpoints take its JWT, never an installation token; a fresh JWT
            # per request, so a 401 has nothing to renew. A token-only client fails here,
            # before any request.
            return await self._http.send(
                method, path, self._auth.app_jwt(), json=json, params=params
            )
        token = await self._auth.bearer(self._exchange)
        try:
            return await self._http.send(method, path, token, json=json, params=params)
        except GitHubAuthError as exc:
            if exc.status != 401 or not self._auth.renewable:
                raise
            # An installation token can be revoked before it expires: mint one more, once.
            self._auth.invalidate()
            token = await self._auth.bearer(self._exchange)
            return await self._http.send(method, path, token, json=json, params=params)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise GitHubProtocolError(
                f"{response.request.method} {response.request.url.path}: answer is not JSON",
                status=response.status_code,
            ) from exc

    @staticmethod
    def _validate(model: type[M], data: Any, where: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise GitHubProtocolError(
                f"{where}: unexpected {model.__name__} ({exc.error_count()} problems)"
            ) from exc

    def _parse(self, model: type[M], response: httpx.Response) -> M:
        return self._validate(model, self._json(response), response.request.url.path)
