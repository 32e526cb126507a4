"""Reads of Prefect's REST API with httpx alone, for `gantry status` and `gantry runs`.

These commands only list runs; Prefect's Python client would cost seconds of imports to send the
same documented requests (POST /api/flows/filter, /api/flow_runs/filter).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from core.settings import StackSettings

# Each pipeline's flow name (flows/pipelines/*.py).
PIPELINE_FLOWS = {"pr": "pr-pipeline", "merge": "merge-pipeline", "release": "release-pipeline"}
# Flow runs read to find those of one repository (Prefect filters parameters only client-side).
SCAN_LIMIT = 200


class ApiError(RuntimeError):
    """The Prefect API did not answer as documented."""


def flow_run_url(ui_url: str, flow_run_id: str) -> str:
    """The run's page in the Prefect UI (the path Prefect's own ``url_for`` builds)."""
    return f"{ui_url}/runs/flow-run/{flow_run_id}"


def _client(settings: StackSettings) -> httpx.Client:
    user, _, password = settings.api_auth_string().partition(":")
    return httpx.Client(base_url=settings.prefect_api_url, auth=(user, password), timeout=10.0)


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        response = client.post(path, json=body)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        # The URL holds no credential (basic auth travels in a header): safe to show.
        raise ApiError(f"{client.base_url}{path}: {exc}") from None
    found: list[dict[str, Any]] = response.json()
    return found


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


def matches_repository(parameters: dict[str, Any], repo: str) -> bool:
    """Whether a run's parameters name ``repo``: its owner/name, clone URL or local path."""
    named = {str(parameters.get(key) or "") for key in ("repository", "repository_name")}
    if repo in named:
        return True
    path = Path(repo)
    return path.is_dir() and str(path.resolve()) in named


def recent_runs(
    settings: StackSettings,
    pipeline: str | None = None,
    repo: str | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The newest runs of the pipelines, newest first, with their state and UI page."""
    with _client(settings) as client:
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
        runs = [r for r in runs if matches_repository(r.get("parameters") or {}, repo)]
    return [_summary(r, flows[r["flow_id"]], settings.prefect_url) for r in runs[:limit]]


def last_runs(settings: StackSettings) -> dict[str, dict[str, str]]:
    """The newest run of each pipeline: its name, state and page in the UI."""
    found: dict[str, dict[str, str]] = {}
    with _client(settings) as client:
        flows = _pipelines(client, None)
        for flow_id, pipeline in flows.items():
            body = {"flows": {"id": {"any_": [flow_id]}}, "sort": "EXPECTED_START_TIME_DESC"}
            runs = _post(client, "/flow_runs/filter", {**body, "limit": 1})
            if runs:
                run = _summary(runs[0], pipeline, settings.prefect_url)
                found[pipeline] = {k: run[k] for k in ("name", "state", "url")}
    return {p: found[p] for p in PIPELINE_FLOWS if p in found}
