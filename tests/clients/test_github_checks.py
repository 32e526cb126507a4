"""Check runs through the real client against the loopback GitHub: App only, annotations in
requests of at most 50, output within GitHub's limits, listing a commit's runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
import pytest
from pydantic import SecretStr

from clients.github import GitHubClient, RetryPolicy
from clients.github_auth import TokenAuth
from clients.github_checks import (
    OUTPUT_TEXT_LIMIT,
    CheckExternalId,
    check_external_id,
    parse_check_external_id,
)
from clients.github_errors import GitHubForbiddenError
from clients.github_models import CheckAnnotation, CheckOutput

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

REPO = "acme/api"
SHA = "0123456789abcdef0123456789abcdef01234567"
RUN_ID = "6f1c1e0a-1111-4222-8333-944455556666"
FAST = RetryPolicy(attempts=2, backoff=0.01, backoff_cap=0.02, max_wait=0.5)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def app_client(fake: FakeGitHub) -> GitHubClient:
    return GitHubClient(fake.app_auth(), api_url=fake.url, policy=FAST, timeout=5)


def made_annotations(count: int) -> tuple[CheckAnnotation, ...]:
    return tuple(
        CheckAnnotation(path=f"src/m{n % 7}.py", start_line=n + 1, end_line=n + 1, message=f"E{n}")
        for n in range(count)
    )


# --- external ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "pr_number", "expected"),
    [
        ("pr", 12, f"pr:12:{RUN_ID}"),
        ("merge", None, f"merge::{RUN_ID}"),
        ("release", None, f"release::{RUN_ID}"),
    ],
)
def test_external_id_names_pipeline_pull_request_and_run_and_parses_back(
    pipeline: str, pr_number: int | None, expected: str
) -> None:
    external_id = check_external_id(pipeline, pr_number, RUN_ID)

    assert external_id == expected
    assert parse_check_external_id(external_id) == CheckExternalId(pipeline, pr_number, RUN_ID)


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "pr:12",
        f"pr:12:{RUN_ID}:x",
        f"pr:twelve:{RUN_ID}",
        f"pr:-1:{RUN_ID}",
        f"pr:0:{RUN_ID}",
        f"pr:012:{RUN_ID}",
        f"PR:1:{RUN_ID}",
        "pr:1:",
        "pr:1:$(reboot)",
        f"pr:١٢:{RUN_ID}",  # non-ASCII digits
    ],
)
def test_external_id_that_gantry_did_not_make_is_refused(forged: str) -> None:
    with pytest.raises(ValueError, match=r"Gantry check run id|not a"):
        parse_check_external_id(forged)


# --- creating and completing -----------------------------------------------------------------


async def test_120_annotations_reach_github_in_requests_of_at_most_50(
    github_api: FakeGitHub,
) -> None:
    wanted = made_annotations(120)
    output = CheckOutput(title="3 problems", summary="**failed**", annotations=wanted)
    async with app_client(github_api) as client:
        created = await client.create_check_run(
            REPO, SHA, "gantry/lint", started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        )
        done = await client.update_check_run(
            REPO, created.id, status="completed", conclusion="failure", output=output
        )

    assert (created.status, done.status, done.conclusion) == ("in_progress", "completed", "failure")
    patches = github_api.requests_to(f"/check-runs/{created.id}", "PATCH")
    sizes = [len(r.json["output"].get("annotations", [])) for r in patches]
    assert sizes == [50, 50, 20]
    # The conclusion goes with the first request: it never waits for the annotations.
    assert patches[0].json["conclusion"] == "failure"
    assert all(r.json["output"]["title"] == "3 problems" for r in patches)
    assert github_api.annotations_of(created.id) == [a.payload() for a in wanted]
    [run] = github_api.check_runs_for(REPO, SHA)
    assert run["started_at"] == "2026-01-02T03:04:05Z"
    assert run["output"]["annotations_count"] == 120


async def test_created_completed_with_annotations_appends_the_rest(github_api: FakeGitHub) -> None:
    output = CheckOutput(title="t", summary="s", annotations=made_annotations(51))
    async with app_client(github_api) as client:
        run = await client.create_check_run(
            REPO, SHA, "gantry/unit", status="completed", conclusion="failure", output=output
        )

    assert [
        len(r.json["output"]["annotations"]) for r in github_api.requests_to("/check-runs")
    ] == [
        50,
        1,
    ]
    assert len(github_api.annotations_of(run.id)) == 51


async def test_summary_and_text_are_cut_to_githubs_limit(github_api: FakeGitHub) -> None:
    output = CheckOutput(title="t " * 300, summary="x" * 70_000, text="y" * 80_000)
    async with app_client(github_api) as client:
        run = await client.create_check_run(
            REPO, SHA, "gantry/unit", status="completed", conclusion="success", output=output
        )

    stored = github_api.check_runs_for(REPO, SHA)[0]["output"]
    assert run.conclusion == "success"
    assert len(stored["summary"]) == OUTPUT_TEXT_LIMIT
    assert len(stored["text"]) == OUTPUT_TEXT_LIMIT
    assert stored["summary"].endswith("(cut to GitHub's length limit)")
    assert len(stored["title"]) <= 200


async def test_completed_without_conclusion_is_refused_before_any_request(
    github_api: FakeGitHub,
) -> None:
    async with app_client(github_api) as client:
        with pytest.raises(ValueError, match="conclusion"):
            await client.create_check_run(REPO, SHA, "gantry/lint", status="completed")
        with pytest.raises(ValueError, match="SHA"):
            await client.create_check_run(REPO, "main", "gantry/lint")

    assert github_api.requests_to("/check-runs") == []


async def test_a_token_cannot_write_check_runs(github_api: FakeGitHub) -> None:
    client = GitHubClient(
        TokenAuth(SecretStr(github_api.token)), api_url=github_api.url, policy=FAST
    )
    async with client:
        with pytest.raises(GitHubForbiddenError) as info:
            await client.create_check_run(REPO, SHA, "gantry/lint")

    assert info.value.status == 403
    assert github_api.token not in str(info.value)
    assert github_api.check_runs_for(REPO, SHA) == []


# --- listing ---------------------------------------------------------------------------------


async def test_listing_a_commits_runs_follows_pages_and_filters(github_api: FakeGitHub) -> None:
    async with app_client(github_api) as client:
        first = await client.create_check_run(REPO, SHA, "gantry/lint", external_id="pr:1:a")
        for n in range(104):
            await client.create_check_run(REPO, SHA, f"gantry/s{n}")
        again = await client.create_check_run(REPO, SHA, "gantry/lint", external_id="pr:1:b")
        await client.update_check_run(REPO, again.id, conclusion="success")

        latest = await client.list_check_runs_for_ref(REPO, SHA)
        every = await client.list_check_runs_for_ref(REPO, SHA, latest_only=False)
        lint = await client.list_check_runs_for_ref(
            REPO, SHA, check_name="gantry/lint", latest_only=False
        )
        running_lint = await client.list_check_runs_for_ref(
            REPO, SHA, check_name="gantry/lint", status="in_progress", latest_only=False
        )

    assert len(latest) == 105 and len(every) == 106  # two pages each
    assert {r.external_id for r in lint} == {"pr:1:a", "pr:1:b"}
    assert [r.id for r in running_lint] == [first.id]
    pages = [r.query for r in github_api.requests_to("/commits/", "GET")]
    assert pages[0] == {"filter": "latest", "per_page": "100", "page": "1"}
    assert pages[1]["page"] == "2"


# --- the stand-in refuses what GitHub refuses ------------------------------------------------


async def test_stand_in_refuses_51_annotations_and_columns_across_lines(
    github_api: FakeGitHub,
) -> None:
    async with app_client(github_api) as client:
        run = await client.create_check_run(REPO, SHA, "gantry/lint")
    [token] = github_api.state.issued_tokens
    one = {"path": "a.py", "start_line": 1, "end_line": 1, "annotation_level": "failure"}
    url = f"{github_api.url}/repos/{REPO}/check-runs/{run.id}"
    bodies = {
        "51 annotations": [{**one, "message": f"m{n}"} for n in range(51)],
        "columns on two lines": [{**one, "message": "m", "end_line": 2, "start_column": 3}],
        "no message": [one],
        "unknown level": [{**one, "message": "m", "annotation_level": "error"}],
    }
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}) as http:
        answers = {
            why: await http.patch(
                url, json={"output": {"title": "t", "summary": "s", "annotations": a}}
            )
            for why, a in bodies.items()
        }
        no_conclusion = await http.patch(url, json={"status": "completed"})
        no_name = await http.post(
            f"{github_api.url}/repos/{REPO}/check-runs", json={"head_sha": SHA}
        )

    assert {why: a.status_code for why, a in answers.items()} == dict.fromkeys(bodies, 422)
    assert no_conclusion.status_code == 422
    assert no_name.status_code == 422
    assert github_api.annotations_of(run.id) == []


def test_columns_are_left_out_of_a_multi_line_annotation() -> None:
    annotation = CheckAnnotation(
        path="a.py", start_line=1, end_line=3, message="m", start_column=2, end_column=4
    )

    assert "start_column" not in annotation.payload()
