"""Prefect's REST API with httpx alone, for `gantry status`, `gantry runs` and `gantry run`.

These commands list runs, or start one and poll it; Prefect's Python client would cost seconds
of imports to send the same documented requests (POST /api/flows/filter, /api/flow_runs/filter,
/api/deployments/{id}/create_flow_run, /api/task_runs/filter, /api/artifacts/filter).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from core.identity import FULL_NAME, location_name

if TYPE_CHECKING:
    from core.settings import StackSettings

# Each pipeline's flow name (flows/pipelines/*.py).
PIPELINE_FLOWS = {"pr": "pr-pipeline", "merge": "merge-pipeline", "release": "release-pipeline"}
# Flow runs read to find those of one repository (Prefect filters parameters only client-side).
SCAN_LIMIT = 200


Progress = Callable[[str], None]
# What a followed run looks like at one poll: its state and each stage's (task run's) state.
Watch = Callable[[str, list[tuple[str, str]]], None]
# Answers of a busy server that Prefect's client retries, and how often it does.
RETRY_CODES = {429, 502, 503}
RETRIES = 5
# Prefect's final state types: the run ends in one of them.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


class ApiError(RuntimeError):
    """The Prefect API did not answer as documented."""


class RunError(RuntimeError):
    """The run could not be started or followed (bad target, stack not reachable)."""


class StageLine(BaseModel):
    name: str
    status: str
    seconds: float
    detail: str = ""


class RunOutcome(BaseModel):
    """What `gantry run ... --json` prints: one object a script can trust."""

    pipeline: str
    flow_run_id: str
    flow_run_name: str
    url: str
    state: str
    passed: bool
    paused: bool = False
    seconds: float
    message: str = ""
    stages: list[StageLine] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)


def progress_lines(progress: Progress) -> Watch:
    """A watch that reports each change as one line: "Running | lint: completed, unit: ..."."""
    last = ""

    def watch(state: str, stages: list[tuple[str, str]]) -> None:
        nonlocal last
        line = state + (" | " + ", ".join(f"{n}: {s}" for n, s in stages) if stages else "")
        if line != last:
            progress(line)
            last = line

    return watch


def flow_run_url(ui_url: str, flow_run_id: str) -> str:
    """The run's page in the Prefect UI (the path Prefect's own ``url_for`` builds)."""
    return f"{ui_url}/runs/flow-run/{flow_run_id}"


def api_client(settings: StackSettings) -> httpx.Client:
    """A client of the stack's API with its credential (basic auth, never in a URL)."""
    user, _, password = settings.api_auth_string().partition(":")
    return httpx.Client(base_url=settings.prefect_api_url, auth=(user, password), timeout=10.0)


def _request(
    client: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    try:
        response = client.request(method, path, json=body)
        for attempt in range(RETRIES):
            # A busy server answers 503 (or 429, 502): retried as Prefect's own client does.
            if response.status_code not in RETRY_CODES:
                break
            time.sleep(min(0.5 * 2**attempt, 5.0))
            response = client.request(method, path, json=body)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        # The URL holds no credential (basic auth travels in a header): safe to show.
        raise ApiError(f"{client.base_url}{path}: {exc}") from None
    return response.json()


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _request(client, "POST", path, body)
    return found


def create_flow_run(
    client: httpx.Client, deployment: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    """A new flow run of ``deployment`` ("flow/deployment"), Scheduled for now: its worker
    picks it up as it does a run that ``run_deployment`` created."""
    flow, _, name = deployment.partition("/")
    found: dict[str, Any] = _request(client, "GET", f"/deployments/name/{flow}/{name}")
    created: dict[str, Any] = _request(
        client, "POST", f"/deployments/{found['id']}/create_flow_run", {"parameters": parameters}
    )
    return created


def read_flow_run(client: httpx.Client, flow_run_id: str) -> dict[str, Any]:
    found: dict[str, Any] = _request(client, "GET", f"/flow_runs/{flow_run_id}")
    return found


def stage_states(client: httpx.Client, flow_run_id: str) -> list[tuple[str, str]]:
    """Each stage (task run) of the flow run and its state, lower case, by name."""
    runs = _post(client, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return sorted((r["name"], ((r.get("state") or {}).get("name") or "?").lower()) for r in runs)


def summary_rows(client: httpx.Client, flow_run_id: str, key: str) -> list[dict[str, Any]]:
    """The rows of the run's summary table artifact ``key`` (none before the run wrote it)."""
    body = {
        "artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": [key]}},
        "limit": 1,
    }
    found = _post(client, "/artifacts/filter", body)
    raw = found[0].get("data") if found else None
    rows = json.loads(raw) if isinstance(raw, str) else raw
    return list(rows) if isinstance(rows, list) else []


def _pipelines(client: httpx.Client, pipeline: str | None) -> dict[str, str]:
    """flow id -> pipeline, for the pipelines asked for."""
    wanted = {pipeline: PIPELINE_FLOWS[pipeline]} if pipeline else PIPELINE_FLOWS
    by_name = {flow: name for name, flow in wanted.items()}
    flows = _post(client, "/flows/filter", {"flows": {"name": {"any_": list(by_name)}}})
    return {flow["id"]: by_name[flow["name"]] for flow in flows}


def _summary(run: dict[str, Any], pipeline: str, ui_url: str) -> dict[str, Any]:
    parameters: dict[str, Any] = run.get("parameters") or {}
    state = run.get("state") or {}
    return {
        "id": run["id"],
        "name": run["name"],
        "pipeline": pipeline,
        "state": state.get("name") or run.get("state_name") or "unknown",
        "repository": parameters.get("repository_name") or parameters.get("repository") or "",
        "sha": str(parameters.get("sha") or ""),
        "start": run.get("start_time") or run.get("expected_start_time") or "",
        "tags": run.get("tags") or [],
        "url": flow_run_url(ui_url, run["id"]),
    }


def repository_matcher(repo: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a run's parameters name ``repo``: its owner/name (any case), a clone URL of it,
    the local path it was started with, or a local clone whose ``origin`` is on GitHub (so
    ``--repo .`` in a checkout finds the runs its webhooks started)."""
    path = Path(repo)
    local = str(path.resolve()) if path.is_dir() else None
    if local is not None:
        full_name = clone_full_name(path)
    else:
        full_name = location_name(repo) if "://" in repo else repo
    wanted = full_name.casefold() if full_name and FULL_NAME.match(full_name) else None

    def matches(parameters: dict[str, Any]) -> bool:
        named = {str(parameters.get(key) or "") for key in ("repository", "repository_name")}
        if repo in named or (local is not None and local in named):
            return True
        return (
            wanted is not None and str(parameters.get("repository_name") or "").casefold() == wanted
        )

    return matches


def clone_full_name(path: Path) -> str | None:
    """The owner/name of a local clone's ``origin`` remote (https, ssh or scp-like URL), if any.

    Only git's configuration is read: nothing of the checkout runs.
    """
    try:
        result = subprocess.run(
            ["git", "-C", str(path), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    url = result.stdout.strip()
    if result.returncode != 0 or not url:
        return None
    if "://" not in url and ":" in url.split("/", 1)[0]:  # scp-like: git@github.com:owner/name
        url = "ssh://" + url.replace(":", "/", 1)
    name = location_name(url) if "://" in url else ""
    return name if FULL_NAME.match(name) else None


def recent_runs(
    settings: StackSettings,
    pipeline: str | None = None,
    repo: str | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The newest runs of the pipelines, newest first, with their state and UI page."""
    with api_client(settings) as client:
        flows = _pipelines(client, pipeline)
        if not flows:
            return []
        body = {
            "flows": {"id": {"any_": list(flows)}},
            "sort": "EXPECTED_START_TIME_DESC",
            "limit": SCAN_LIMIT if repo else limit,
        }
        runs = _post(client, "/flow_runs/filter", body)
    if repo:
        matches = repository_matcher(repo)
        runs = [r for r in runs if matches(r.get("parameters") or {})]
    return [_summary(r, flows[r["flow_id"]], settings.prefect_url) for r in runs[:limit]]


def last_runs(settings: StackSettings) -> dict[str, dict[str, str]]:
    """The newest run of each pipeline: its name, state and page in the UI."""
    found: dict[str, dict[str, str]] = {}
    with api_client(settings) as client:
        flows = _pipelines(client, None)
        for flow_id, pipeline in flows.items():
            body = {"flows": {"id": {"any_": [flow_id]}}, "sort": "EXPECTED_START_TIME_DESC"}
            runs = _post(client, "/flow_runs/filter", {**body, "limit": 1})
            if runs:
                run = _summary(runs[0], pipeline, settings.prefect_url)
                found[pipeline] = {k: run[k] for k in ("name", "state", "url")}
    return {p: found[p] for p in PIPELINE_FLOWS if p in found}
