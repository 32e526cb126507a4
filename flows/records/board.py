"""The repository board: one markdown artifact per repository, for people who watch the UI.

It shows the last runs of each pipeline (state, commit, when, duration, link), the repository's
DORA figures over ``DORA_WINDOW`` and its open release candidates with their digests. Merge runs
(candidates change there) and release runs update it as they finish, from a state hook. Its key
is the same for every version (``board-<slug>``), so the UI's Artifacts page keeps its history
under one key and shows the newest.

Which runs are the repository's: webhook-started runs carry a ``repo:<full name>`` tag; runs
started by ``gantry run`` carry only their deployment's tags (``gantry``, ``pipeline:<name>``).
Both are read by their ``pipeline:`` tag, and a run counts when its ``repo:`` tag, else the
parameters that name its repository, give this repository's full name (case-insensitively).

The board is a nicety: building it never fails, delays much or changes a pipeline's outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import Flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, State
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import BaseModel

from core.identity import RepositoryIdentity, identity_of
from core.links import flow_run_url
from flows.logs import step_logger
from flows.records.announce import DORA_WINDOW
from flows.records.dora import DoraReport, compute_dora, deployment_records, window_label
from flows.records.markdown import code_span, escape_inline
from flows.records.store import ReleaseCandidate, ReleaseRecord, list_candidates, list_releases

PIPELINES = ("pr", "merge", "release")
BOARD_PREFIX = "board-"
RUNS_SHOWN = 5
CANDIDATES_SHOWN = 10
# Runs started from the CLI carry no repository tag: they are found among the pipeline's runs
# of every repository, newest first, this many at most.
PAGE_SIZE = 50
MAX_PAGES = 4
# A pipeline waits this long at most for its board.
BUILD_TIMEOUT = 30.0
REPO_TAG = "repo:"


def board_key(identity: RepositoryIdentity) -> str:
    """The artifact key of a repository's board: the identity's slug is already key-safe."""
    return f"{BOARD_PREFIX}{identity.slug}"


class BoardRun(BaseModel):
    """One run as the board shows it."""

    pipeline: str
    id: str
    name: str
    state: str
    commit: str | None = None
    started: datetime | None = None
    seconds: float | None = None


class Board(BaseModel):
    """What a repository's board shows."""

    identity: RepositoryIdentity
    runs: dict[str, list[BoardRun]]
    dora: DoraReport
    candidates: list[ReleaseCandidate]
    updated: datetime


def names_repository(run: FlowRun, identity: RepositoryIdentity) -> bool:
    """Whether ``run`` is of ``identity``'s repository: its ``repo:`` tag decides, else its
    parameters (a CLI run's path or URL, or its ``repository_name``)."""
    tagged = [t.removeprefix(REPO_TAG) for t in run.tags if t.startswith(REPO_TAG)]
    if tagged:
        return any(name.casefold() == identity.key for name in tagged)
    params = run.parameters
    if not (params.get("repository") or params.get("repository_name")):
        return False
    try:
        named = identity_of(
            params.get("repository"), params.get("repository_name"), params.get("repository_id")
        )
    except (TypeError, ValueError):  # parameters of some other shape: not this repository's
        return False
    return named.key == identity.key


def _newest_first(run: FlowRun) -> datetime:
    moment = run.start_time or run.expected_start_time or run.created
    return moment or datetime.min.replace(tzinfo=UTC)


async def pipeline_runs(
    client: PrefectClient, pipeline: str, identity: RepositoryIdentity, limit: int = RUNS_SHOWN
) -> list[FlowRun]:
    """The newest ``limit`` runs of ``pipeline`` for ``identity``, webhook- or CLI-started."""
    newest = FlowRunSort.EXPECTED_START_TIME_DESC
    # Webhook runs, asked of the server by their tags: found however many other runs there are.
    tagged = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"pipeline:{pipeline}", f"{REPO_TAG}{identity.full_name}"])
        ),
        sort=newest,
        limit=limit,
    )
    found = {run.id: run for run in tagged}
    # Every run of the pipeline (CLI runs have only their deployment's tags), a page at a time,
    # until ``limit`` of them are this repository's: the rest are older than those.
    matched = 0
    every = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"pipeline:{pipeline}"]))
    for page in range(MAX_PAGES):
        runs = await client.read_flow_runs(
            flow_run_filter=every, sort=newest, limit=PAGE_SIZE, offset=page * PAGE_SIZE
        )
        for run in runs:
            if names_repository(run, identity):
                found[run.id] = run
                matched += 1
        if matched >= limit or len(runs) < PAGE_SIZE:
            break
    return sorted(found.values(), key=_newest_first, reverse=True)[:limit]


def _seconds(run: FlowRun, now: datetime, final: bool) -> float | None:
    if run.start_time is None:
        return None
    if final and run.end_time is not None:
        return float((run.end_time - run.start_time).total_seconds())
    # Still running: how long it has run so far.
    return float((now - run.start_time).total_seconds())


def board_run(
    pipeline: str,
    run: FlowRun,
    releases: Iterable[ReleaseRecord],
    now: datetime,
) -> BoardRun:
    """``run`` as a board row. The run whose hook builds the board is already final on the
    server (see ``board_hook``), so every run's state is read from there."""
    state = run.state
    final = state is not None and state.is_final()
    commit = run.parameters.get("sha")
    if pipeline == "release":
        # A release names a candidate or a tag; the commit is in its release record.
        commit = next((r.commit_sha for r in releases if r.flow_run_id == str(run.id)), None)
    return BoardRun(
        pipeline=pipeline,
        id=str(run.id),
        name=run.name,
        state=(state.name if state else None) or "Pending",
        commit=str(commit) if commit else None,
        started=run.start_time or run.expected_start_time,
        seconds=_seconds(run, now, final),
    )


def open_candidates(
    identity: RepositoryIdentity,
    candidates: Sequence[ReleaseCandidate],
    releases: Iterable[ReleaseRecord],
) -> list[ReleaseCandidate]:
    """Staging-verified builds not yet released: the candidates (newest first) recorded after
    the newest one that reached production, written by their own merge run, of this repository.
    """
    released = {r.candidate_id for r in releases if r.outcome == "success"}
    found: list[ReleaseCandidate] = []
    for candidate in candidates:
        if candidate.id in released:
            break  # production already runs this one or something newer: older ones are passed
        recorded = candidate.identity
        if recorded is None or recorded.key != identity.key:
            continue
        if not candidate.recorded_by_run or candidate.recorded_by_run != candidate.flow_run_id:
            continue  # not written by its merge run: the release would refuse it too
        found.append(candidate)
    return found


async def read_board(identity: RepositoryIdentity) -> Board:
    """Everything the board shows, read from the Prefect server."""
    now = datetime.now(UTC)
    releases = await list_releases(identity.slug)
    candidates = await list_candidates(identity.slug)
    runs: dict[str, list[BoardRun]] = {}
    async with get_client() as client:
        for pipeline in PIPELINES:
            found = await pipeline_runs(client, pipeline, identity)
            runs[pipeline] = [board_run(pipeline, r, releases, now) for r in found]
    dora = compute_dora(
        deployment_records(releases), DORA_WINDOW, now=now, repository=identity.slug
    )
    return Board(
        identity=identity,
        runs=runs,
        dora=dora,
        candidates=open_candidates(identity, candidates, releases),
        updated=now,
    )


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "not started"


def duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 05s``, ``12s``; a dash when unknown."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d {hours % 24:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _link(run_id: str, text: str) -> str:
    url = flow_run_url(run_id)
    return f"[{escape_inline(text)}]({url})" if url else escape_inline(text)


def _runs_table(runs: Sequence[BoardRun]) -> list[str]:
    if not runs:
        return ["No runs yet."]
    lines = ["| run | state | commit | started | duration |", "|---|---|---|---|---|"]
    for run in runs:
        commit = code_span(run.commit[:12]) if run.commit else "-"
        lines.append(
            f"| {_link(run.id, run.name)} | {escape_inline(run.state)} | {commit} "
            f"| {_when(run.started)} | {duration(run.seconds)} |"
        )
    return lines


def _dora_lines(report: DoraReport) -> list[str]:
    def share(value: float | None) -> str:
        return "no releases" if value is None else f"{value:.0%}"

    lead = (
        f"median {duration(report.lead_time_median_seconds)}, "
        f"p90 {duration(report.lead_time_p90_seconds)}"
        if report.lead_time_median_seconds is not None
        else "no successful release"
    )
    restore = (
        duration(report.time_to_restore_median_seconds)
        if report.time_to_restore_median_seconds is not None
        else "nothing restored"
    )
    return [
        f"Production, last {window_label(report)}:",
        "",
        f"- Deployments: {report.deployments} of {report.releases} releases "
        f"({report.deployment_frequency_per_day:.2f} per day)",
        f"- Lead time for changes: {lead}",
        f"- Change failure rate: {share(report.change_failure_rate)} "
        f"({report.failed_releases} failed or rolled back)",
        f"- Time to restore (median): {restore}; open failures: {report.open_failures}",
    ]


def _candidate_lines(candidates: Sequence[ReleaseCandidate]) -> list[str]:
    if not candidates:
        return ["No open release candidates."]
    lines: list[str] = []
    for candidate in candidates[:CANDIDATES_SHOWN]:
        lines.append(
            f"- {code_span(candidate.id)}: commit {code_span(candidate.commit_sha)}, "
            f"verified on staging {_when(candidate.created_at)} by "
            f"{_link(candidate.flow_run_id, 'its merge run')}"
        )
        for name, ref in sorted(candidate.images.items()):
            # Whole: a digest is what a person copies to verify or pull.
            lines.append(f"  - {escape_inline(name)}: {code_span(ref, limit=len(ref) + 1)}")
    if len(candidates) > CANDIDATES_SHOWN:
        lines.append(f"- ... and {len(candidates) - CANDIDATES_SHOWN} older")
    return lines


def render(board: Board) -> str:
    """The board as markdown; every untrusted piece is escaped or in a code span."""
    lines = [
        f"# {escape_inline(board.identity.full_name)}",
        "",
        f"Updated {_when(board.updated)}.",
        "",
    ]
    for pipeline in PIPELINES:
        lines += [f"## Last {pipeline} runs", "", *_runs_table(board.runs[pipeline]), ""]
    lines += ["## DORA", "", *_dora_lines(board.dora), ""]
    lines += ["## Open release candidates", "", *_candidate_lines(board.candidates)]
    return "\n".join(lines) + "\n"


async def update_board(identity: RepositoryIdentity) -> bool:
    """Publish the repository's board; False (and a warning) when it could not be. Never raises."""
    try:
        async with asyncio.timeout(BUILD_TIMEOUT):
            board = await read_board(identity)
            await acreate_markdown_artifact(
                markdown=render(board),
                key=board_key(identity),
                description=f"board of {identity.full_name}: last runs, DORA, open candidates",
            )
    except Exception as exc:  # the run is done; its board must not undo that
        step_logger("board").warning(
            "board of %s not updated: %s",
            identity.full_name,
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        )
        return False
    return True


async def board_hook(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """A pipeline's ``on_completion`` / ``on_failure`` hook: update its repository's board.

    A hook, not the flow's last step: Prefect runs it once the run's final state is on the
    server, so the run shows as finished (and the next run can start) without waiting for the
    board's reads. It also covers every way a run ends, early refusals included.
    """
    del flow, state  # the server holds the run's final state already
    parameters = flow_run.parameters
    try:
        identity = identity_of(
            parameters.get("repository"),
            parameters.get("repository_name"),
            parameters.get("repository_id"),
        )
    except ValueError:  # a run that could not name its repository has no board
        return
    await update_board(identity)
