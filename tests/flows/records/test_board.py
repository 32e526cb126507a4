"""The repository board, built from real flow runs and records on a real Prefect server and read
back through the Prefect API by its key."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from markdown_it import MarkdownIt
from prefect import flow, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    ArtifactFilter,
    ArtifactFilterKey,
)
from prefect.runtime import flow_run

from core.identity import RepositoryIdentity
from deployments.prefect_server import PrefectServer
from flows.records.announce import DORA_WINDOW
from flows.records.board import Board, BoardRun, board_hook, board_key, render, update_board
from flows.records.dora import compute_dora
from flows.records.store import ReleaseCandidate, ReleaseRecord, record_candidate, record_release


def digest_ref(image: str) -> str:
    return f"127.0.0.1:5000/{image}@sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}"


def candidate(identity: RepositoryIdentity, sha: str, run_id: str) -> ReleaseCandidate:
    return ReleaseCandidate(
        id=f"rc-{sha[:12]}-{uuid.uuid4().hex[:6]}",
        repository=f"https://github.com/{identity.full_name}.git",
        repository_slug=identity.slug,
        repository_name=identity.full_name,
        repository_full_name=identity.full_name,
        repository_id=identity.id,
        commit_sha=sha,
        images={"api": digest_ref("api"), "worker": digest_ref("worker")},
        flow_run_id=run_id,
    )


def release(
    identity: RepositoryIdentity, of: ReleaseCandidate, outcome: str, ago: timedelta, run: str
) -> ReleaseRecord:
    finished = datetime.now(UTC) - ago
    return ReleaseRecord.model_validate(
        {
            "id": f"rel-{uuid.uuid4().hex[:10]}",
            "repository_slug": identity.slug,
            "candidate_id": of.id,
            "commit_sha": of.commit_sha,
            "images": of.images,
            "outcome": outcome,
            "flow_run_id": run,
            "started_at": finished - timedelta(minutes=2),
            "finished_at": finished,
            "commit_time": finished - timedelta(hours=5),
        }
    )


@flow(name="board-merge-probe")
async def merge_like(
    sha: str,
    identity: RepositoryIdentity,
    repository: str | None = None,
    repository_name: str | None = None,
    repository_id: int | None = None,
) -> ReleaseCandidate:
    """A merge run whose E2E passed: it records its candidate, as merge-pipeline does."""
    del repository, repository_name, repository_id  # read back by the board from the run
    recorded = candidate(identity, sha, str(flow_run.get_id()))
    await record_candidate(recorded)
    return recorded


@flow(name="board-pr-probe")
def pr_like(sha: str, repository_name: str, pr_number: int) -> None:
    del sha, repository_name, pr_number


@flow(name="board-release-probe", on_completion=[board_hook])
async def release_like(
    identity: RepositoryIdentity, released: ReleaseCandidate, repository_name: str
) -> None:
    """A release run: an hour after a failed one, it records a good release; its completion
    hook updates the board, as the release pipeline's does."""
    del repository_name
    run = str(flow_run.get_id())
    await record_release(release(identity, released, "failed", timedelta(hours=1), "elsewhere"))
    await record_release(release(identity, released, "success", timedelta(0), run))


def webhook(pipeline: str, identity: RepositoryIdentity) -> Any:
    """The tags a webhook-started run carries (webhooks/events.py)."""
    return tags("gantry", f"pipeline:{pipeline}", f"repo:{identity.full_name}", "delivery:d1")


def from_cli(pipeline: str) -> Any:
    """The tags a `gantry run` run carries: only its deployment's."""
    return tags("gantry", f"pipeline:{pipeline}")


async def latest_board(key: str) -> tuple[str, int]:
    """The newest version of the board under ``key`` and how many versions the key holds."""
    async with get_client() as client:
        latest = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
        versions = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert len(latest) == 1 and latest[0].key == key
    return str(latest[0].data), len(versions)


def test_the_board_shows_one_repositorys_runs_dora_and_open_candidates_under_one_key(
    prefect_server: PrefectServer,
) -> None:
    del prefect_server
    tail = uuid.uuid4().hex[:8]
    ours = RepositoryIdentity(full_name=f"acme/board-{tail}", id=7)
    theirs = RepositoryIdentity(full_name=f"acme/other-{tail}", id=8)
    shas = {
        name: uuid.uuid4().hex + uuid.uuid4().hex[:8] for name in ("older", "old", "new", "pr", "b")
    }

    async def scenario() -> dict[str, Any]:
        name = ours.full_name
        with webhook("merge", ours):
            # Never released, but production moves past it below: no longer a candidate.
            passed = await merge_like.with_options(flow_run_name=f"merge-older-{tail}")(
                shas["older"], ours, repository_name=name, repository_id=ours.id
            )
            old = await merge_like.with_options(flow_run_name=f"merge-old-{tail}")(
                shas["old"], ours, repository_name=name, repository_id=ours.id
            )
        with from_cli("merge"):  # `gantry run merge --repo https://github.com/acme/board-...`
            new = await merge_like.with_options(flow_run_name=f"merge-new-{tail}")(
                shas["new"], ours, repository=f"https://github.com/{name}.git"
            )
        with webhook("pr", ours):
            pr_like.with_options(flow_run_name=f"pr-{tail}")(shas["pr"], name, 3)
        with webhook("merge", theirs):
            other = await merge_like.with_options(flow_run_name=f"merge-theirs-{tail}")(
                shas["b"], theirs, repository_name=theirs.full_name, repository_id=theirs.id
            )
        # Written by no merge run: the release would refuse it, and the board never offers it.
        forged = candidate(ours, "f" * 40, str(uuid.uuid4()))
        await record_candidate(forged)
        with webhook("release", ours):
            await release_like.with_options(flow_run_name=f"release-{tail}")(ours, old, name)
        first = await latest_board(board_key(ours))
        # A second update, after one more run: the same key, and the newest version wins.
        with webhook("merge", ours):
            await merge_like.with_options(flow_run_name=f"merge-newer-{tail}")(
                shas["pr"], ours, repository_name=name, repository_id=ours.id
            )
        assert await update_board(ours)
        return {
            "passed": passed,
            "old": old,
            "new": new,
            "other": other,
            "forged": forged,
            "first": first,
        }

    found = asyncio.run(scenario())
    board, versions = found["first"]
    # This repository's runs, webhook- and CLI-started, with their commits; none of the other's.
    for name in (f"merge-old-{tail}", f"merge-new-{tail}", f"pr-{tail}", f"release-{tail}"):
        assert f"[{name}](" in board
    assert f"merge-theirs-{tail}" not in board and shas["b"][:12] not in board
    assert f"`{shas['new'][:12]}`" in board and f"`{shas['pr'][:12]}`" in board
    # The release run that built the board is shown as it ends, with its release's commit.
    release_row = next(line for line in board.splitlines() if f"release-{tail}" in line)
    assert "| Completed |" in release_row and f"`{shas['old'][:12]}`" in release_row
    # DORA over the window: one good release of two, restored an hour after the failure.
    assert "Deployments: 1 of 2 releases" in board
    assert "Change failure rate: 50% (1 failed or rolled back)" in board
    assert "Lead time for changes: median 5h 00m" in board
    assert "Time to restore (median): 1h 00m" in board
    # Open: the newer candidate only, every digest whole in a code span; not the released one
    # or an older one, not the other repository's, not one its merge run did not write.
    new, old, other, forged = found["new"], found["old"], found["other"], found["forged"]
    for ref in new.images.values():
        assert f"`{ref}`" in board
    assert new.id in board
    for gone in (found["passed"], old, other, forged):
        assert gone.id not in board
    assert versions == 1

    latest, versions = asyncio.run(latest_board(board_key(ours)))
    assert versions == 2
    assert f"merge-newer-{tail}" in latest and f"merge-newer-{tail}" not in board
    assert board_key(ours).startswith("board-acme-board-")


def test_text_from_runs_is_inert_on_the_board() -> None:
    # A branch-named run, a hostile commit and image name: none becomes a link, an image,
    # HTML or a new table cell; the digest stays whole in its code span.
    identity = RepositoryIdentity(full_name="acme/board-hostile")
    hostile = "pr-9 [approved](https://evil.example) <img src=x> | forged cell"
    now = datetime.now(UTC)
    run = BoardRun(
        pipeline="pr",
        id=str(uuid.uuid4()),
        name=hostile,
        state="Completed",
        commit="`rm -rf`",
        started=now,
        seconds=3.0,
    )
    made = candidate(identity, "a" * 40, str(uuid.uuid4()))
    ref = digest_ref("api")
    made = made.model_copy(update={"images": {"<b>api</b> [x](y)": ref}})
    board = Board(
        identity=identity,
        runs={"pr": [run], "merge": [], "release": []},
        dora=compute_dora([], DORA_WINDOW, now=now, repository=identity.slug),
        candidates=[made],
        updated=now,
    )
    text = render(board)
    tokens = []
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        tokens += [token, *(token.children or [])]
    kinds = {t.type for t in tokens}
    assert not {"image", "html_block", "html_inline"} & kinds
    links = [t.attrGet("href") for t in tokens if t.type == "link_open"]
    assert not any("evil.example" in str(href) for href in links)
    # The pr table keeps its five columns: the run's "|" did not open a sixth.
    row = next(line for line in text.splitlines() if "forged cell" in line)
    assert row.count(" | ") - row.count("\\|") <= 4
    assert f"`{ref}`" in text


def test_a_board_that_cannot_be_built_never_raises_into_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
    identity = RepositoryIdentity(full_name="acme/board-unreachable")
    updates = {PREFECT_API_URL: address, PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(updates=updates), caplog.at_level(logging.WARNING):
        assert not asyncio.run(update_board(identity))
    assert any("board of acme/board-unreachable not updated" in r.message for r in caplog.records)
