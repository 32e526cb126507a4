"""The run summary: what the report shows, and the link to the previous run of the same PR."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import FlowRun, State
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from clients.snyk import Finding
from core.ports import free_port
from deployments.prefect_server import PrefectServer
from flows.config import Scan
from flows.pipelines.stages import PipelineSummary, finish
from flows.records.history import PreviousRun, matches, previous_run
from flows.records.summary import render_markdown, report_key, stage_rows, summary_key
from flows.results import RunContext, StageResult, StageStatus
from flows.steps.scan import judge

DIGEST = "sha256:" + "ab" * 32
IMAGE_ID = "sha256:" + "cd" * 32
REGISTRY = "127.0.0.1:5000/acme-api"


def finding(severity: str, package: str = "django") -> Finding:
    return Finding(
        package=package,
        version="4.2.0",
        severity=severity,
        id=f"SNYK-{package}-{severity}",
        title="a known vulnerability",
    )


def scanned(findings: list[Finding]) -> StageResult:
    """The scan stage's result exactly as the scan builds it."""
    result = judge(findings, Scan(fail_on="high"), ["requirements.txt"], time.monotonic()).data
    assert isinstance(result, StageResult)
    return result


def passed(name: str, **data: Any) -> StageResult:
    return StageResult(name=name, status=StageStatus.PASSED, seconds=1.25, data=data)


BUILT = passed(
    "build",
    images={
        "api": {"ref": "gantry.local/acme-api/api:abc1234", "id": IMAGE_ID, "path": "x", "tag": "t"}
    },
)


# --- what the report shows ------------------------------------------------------------------


def test_scan_findings_are_counted_by_severity_worst_first() -> None:
    scan = scanned([finding("critical"), finding("medium"), finding("medium", "flask")])
    assert scan.status == StageStatus.FAILED

    report = render_markdown("pr", [passed("lint"), scan], 3.0, {})

    assert (
        "**Scan findings**: critical 1, high 0, medium 2, low 0 (fails at high or worse)" in report
    )


def test_a_clean_scan_shows_zeros_not_nothing() -> None:
    report = render_markdown("pr", [scanned([])], 3.0, {})
    assert "**Scan findings**: critical 0, high 0, medium 0, low 0" in report


def test_a_skipped_scan_says_it_did_not_run_and_why() -> None:
    skipped = StageResult(
        name="scan", status=StageStatus.SKIPPED, detail="not configured: no Snyk token"
    )
    report = render_markdown("pr", [skipped], 3.0, {})
    assert "**Scan findings**: not run: not configured: no Snyk token" in report
    assert "critical" not in report


def test_a_scan_without_an_answer_is_not_shown_as_clean() -> None:
    failed = StageResult(
        name="scan",
        status=StageStatus.FAILED,
        detail="Snyk did not answer within the scan timeout (300s)",
        data={"manifests": ["requirements.txt"]},
    )
    report = render_markdown("pr", [failed], 3.0, {})
    assert "**Scan findings**: unknown, the scan did not complete: Snyk did not answer" in report
    assert "critical 0" not in report


def test_no_scan_stage_no_scan_section() -> None:
    assert "Scan findings" not in render_markdown("release", [passed("deploy-production")], 1, {})


def test_a_built_image_shows_its_local_id_and_says_it_was_not_pushed() -> None:
    report = render_markdown("pr", [BUILT], 3.0, {})
    assert "### Images" in report
    assert (
        f"- `api` → `gantry.local/acme-api/api:abc1234` (built, not pushed, image id `{IMAGE_ID}`)"
        in report
    )


def test_merge_shows_pinned_digests_and_the_staging_link() -> None:
    pinned = f"{REGISTRY}/api@{DIGEST}"
    push = passed(
        "push",
        images={"api": {"ref": f"{REGISTRY}/api:abc", "digest": DIGEST, "pinned": pinned}},
    )
    data = {"images": {"api": pinned}, "staging_url": "http://127.0.0.1:18080", "x": 1}

    report = render_markdown("merge", [BUILT, push], 9.0, data)

    assert f"- `api` → `{pinned}`" in report
    assert "not pushed" not in report
    assert "### Deployed\n- staging: [http://127.0.0.1:18080](http://127.0.0.1:18080)" in report
    # Facts without a section of their own are still listed; the shown ones are not repeated.
    assert "**x**: `1`" in report
    assert "**images**" not in report
    assert "**staging_url**" not in report


def test_release_shows_the_candidate_digests_and_the_production_link() -> None:
    data = {
        "images": {"worker": f"{REGISTRY}/worker@{DIGEST}", "api": f"{REGISTRY}/api@{DIGEST}"},
        "production_url": "https://api.example.com/",
    }
    report = render_markdown("release", [passed("deploy-production")], 9.0, data)
    images = report.split("### Images\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert images == [
        f"- `api` → `{REGISTRY}/api@{DIGEST}`",
        f"- `worker` → `{REGISTRY}/worker@{DIGEST}`",
    ]
    assert "- production: [https://api.example.com/](https://api.example.com/)" in report


def test_a_url_that_is_not_plain_http_is_quoted_not_linked() -> None:
    report = render_markdown("merge", [], 1.0, {"staging_url": "javascript:alert(1)"})
    assert "- staging: `javascript:alert(1)`" in report
    assert "](javascript" not in report


def test_the_previous_run_is_linked_under_the_heading() -> None:
    previous = PreviousRun(
        id="1234",
        name="pr-7-abc1234",
        state="Failed",
        url="http://127.0.0.1:4200/runs/flow-run/1234",
        subject="PR #7",
    )
    report = render_markdown("pr", [passed("lint")], 2.0, {}, previous)
    assert report.splitlines()[2] == (
        "Previous run of PR #7: [pr-7-abc1234](http://127.0.0.1:4200/runs/flow-run/1234) (Failed)"
    )


def test_the_table_rows_keep_the_keys_the_cli_reads() -> None:
    assert summary_key("pr") == "pr-summary"
    assert report_key("pr") == "pr-report"
    assert stage_rows([scanned([])]) == [
        {
            "stage": "scan",
            "status": "passed",
            "seconds": pytest.approx(0, abs=0.1),
            "detail": "no known vulnerabilities in 1 manifest",
            "cached_from": "",
        }
    ]


# --- the previous run, looked up on a real Prefect server ----------------------------------


@flow(name="history-pr-under-test")
async def pr_like(
    repository: str, sha: str, pr_number: int | None = None, head_ref: str | None = None
) -> tuple[str, PreviousRun | None]:
    context = RunContext(
        pipeline="pr", repository=repository, sha=sha, pr_number=pr_number, ref=head_ref
    )
    return str(flow_run.get_id()), await previous_run(context)


@flow(name="history-pr-other-flow-under-test")
async def other_flow(repository: str, sha: str, pr_number: int) -> PreviousRun | None:
    return await previous_run(
        RunContext(pipeline="pr", repository=repository, sha=sha, pr_number=pr_number)
    )


@flow(name="history-merge-under-test")
async def merge_like(
    repository: str, sha: str, ref: str = "main", repository_name: str | None = None
) -> tuple[str, PreviousRun | None]:
    context = RunContext(
        pipeline="merge", repository=repository, sha=sha, ref=ref, repository_name=repository_name
    )
    return str(flow_run.get_id()), await previous_run(context)


@flow(name="history-summary-under-test")
async def summarized(repository: str, sha: str, pr_number: int) -> State[PipelineSummary]:
    context = RunContext(pipeline="pr", repository=repository, sha=sha, pr_number=pr_number)
    return await finish(context, [scanned([finding("high")])], time.monotonic())


def repo_url() -> str:
    # Each test its own repository: the session's server keeps every earlier test's runs.
    return f"https://github.com/acme/svc-{uuid.uuid4().hex[:8]}.git"


@pytest.mark.slow
def test_the_previous_run_of_the_same_pr_is_found_and_no_other(
    prefect_server: PrefectServer,
) -> None:
    repo = repo_url()
    first_id, first_previous = asyncio.run(pr_like(repo, "a" * 40, pr_number=7))
    assert first_previous is None  # nothing before the first run

    asyncio.run(pr_like(repo, "b" * 40, pr_number=8))  # another PR of the same repository
    asyncio.run(pr_like(repo_url(), "c" * 40, pr_number=7))  # PR #7 of another repository
    asyncio.run(other_flow(repo, "d" * 40, pr_number=7))  # same PR, another flow

    # The same repository written without ".git": still the same repository.
    second_id, previous = asyncio.run(pr_like(repo.removesuffix(".git"), "e" * 40, pr_number=7))

    assert previous is not None
    assert previous.id == first_id
    assert previous.subject == "PR #7"
    assert previous.state == "Completed"
    assert previous.name
    assert previous.url == f"{prefect_server.settings.prefect_url}/runs/flow-run/{first_id}"

    # The newest earlier run wins.
    _, third_previous = asyncio.run(pr_like(repo, "f" * 40, pr_number=7))
    assert third_previous is not None and third_previous.id == second_id


@pytest.mark.slow
def test_the_previous_merge_run_is_of_the_same_branch(prefect_server: PrefectServer) -> None:
    repo = repo_url()
    name = f"acme/{uuid.uuid4().hex[:8]}"
    main_id, _ = asyncio.run(merge_like(repo, "a" * 40, "main", name))
    asyncio.run(merge_like(repo, "b" * 40, "release-1", name))
    # Another clone URL of the same owner/name: the name decides when both runs have one.
    _, previous = asyncio.run(merge_like(repo + "-mirror", "c" * 40, "main", name))
    assert previous is not None
    assert previous.id == main_id
    assert previous.subject == "branch main"


@pytest.mark.slow
def test_the_report_artifact_links_the_previous_run(prefect_server: PrefectServer) -> None:
    repo = repo_url()
    # Prefect's overloads type these calls as States, though an async flow's call is awaited.
    first_call: Any = summarized(repo, "a" * 40, 5, return_state=True)
    first: State[Any] = asyncio.run(first_call)
    second_call: Any = summarized(repo, "b" * 40, 5, return_state=True)
    second: State[Any] = asyncio.run(second_call)
    first_id = first.state_details.flow_run_id
    assert second.is_failed()  # the high finding fails the run; the report is written anyway

    async def report(run_id: uuid.UUID | None) -> str:
        assert run_id is not None
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                    key=ArtifactFilterKey(any_=["pr-report"]),
                )
            )
            first_run = await client.read_flow_run(first_id) if first_id else None
        assert len(artifacts) == 1 and first_run is not None
        assert isinstance(artifacts[0].data, str)
        return artifacts[0].data.replace(first_run.name, "<first>")

    url = f"{prefect_server.settings.prefect_url}/runs/flow-run/{first_id}"
    text = asyncio.run(report(second.state_details.flow_run_id))
    assert f"Previous run of PR #5: [<first>]({url}) (Failed)" in text
    assert "**Scan findings**: critical 0, high 1, medium 0, low 0" in text
    assert "Previous run" not in asyncio.run(report(first_id))


# --- a lookup that cannot be made ------------------------------------------------------------


def current_run() -> FlowRun:
    return FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="pr-7-abc1234")


CONTEXT = RunContext(pipeline="pr", repository="https://github.com/acme/api.git", sha="a" * 40)


def test_an_unreachable_api_leaves_the_link_out_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = CONTEXT.model_copy(update={"pr_number": 7})
    unreachable = f"http://127.0.0.1:{free_port()}/api"
    with (
        temporary_settings(updates={PREFECT_API_URL: unreachable}),
        caplog.at_level(logging.WARNING),
    ):
        found = asyncio.run(previous_run(context, current_run()))
    assert found is None
    assert "could not look up the previous run of PR #7" in caplog.text


@pytest.fixture
def silent_api() -> Iterator[str]:
    """An API address that accepts connections and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/api"


@pytest.mark.timeout(60)
def test_a_silent_api_is_given_up_on_in_time(silent_api: str) -> None:
    # The API never answers: returning at all proves the lookup gave up by itself.
    context = CONTEXT.model_copy(update={"pr_number": 7})
    with temporary_settings(updates={PREFECT_API_URL: silent_api}):
        found = asyncio.run(previous_run(context, current_run(), timeout=0.5))
    assert found is None


def test_no_lookup_without_a_run_or_anything_to_compare() -> None:
    # Outside a flow run there is no "this run" to look back from.
    assert asyncio.run(previous_run(CONTEXT.model_copy(update={"pr_number": 7}))) is None
    # A PR run with neither a number nor a branch has nothing that makes a run "the same".
    assert asyncio.run(previous_run(CONTEXT, current_run())) is None


def test_which_earlier_runs_count_as_the_same() -> None:
    url = "https://github.com/acme/api.git"
    release = RunContext(pipeline="release", repository=url, sha="", repository_name="acme/api")
    # A release is matched on its repository, whatever candidate or tag it was about.
    assert matches(release, {"repository_name": "ACME/api", "candidate_id": "rc-1"})
    assert not matches(release, {"repository_name": "acme/web"})
    # Known only by a name on one side and a URL on the other: no guess, no link.
    assert not matches(
        release.model_copy(update={"repository_name": None}), {"repository_name": "acme/api"}
    )
    # A PR run without a number is matched on its branch, never on another PR's number.
    branch = RunContext(pipeline="pr", repository=url, sha="", ref="feature")
    assert matches(branch, {"repository": url + "/", "head_ref": "feature"})
    assert not matches(branch, {"repository": url, "head_ref": "feature", "pr_number": 3})
    assert matches(
        branch.model_copy(update={"pr_number": 3}), {"repository": url, "pr_number": "3"}
    )
