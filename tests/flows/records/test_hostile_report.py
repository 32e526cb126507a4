"""A real PR pipeline run whose check tries to forge its report and print a secret.

The check prints a fake closing code fence, then markdown a reader could take for Gantry's own
(an "Approved" heading, a link, HTML), then a secret the trusted side holds. The run's report
artifact, read back from the stack's Prefect server and parsed as CommonMark, shows all of it
inside the failed stage's block, nothing outside it, and never the secret.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from pydantic import SecretStr

from blocks.github import GitHubCredentials
from blocks.saved import load_saved_block
from core.redact import forget_secrets
from flows.pipelines.pr import pr_pipeline
from flows.records.summary import report_key
from tests.plugins.gitrepo import GitRepo, gantry_toml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_stack"), pytest.mark.timeout(600)]

# Not shaped like any known credential: only its registration can mask it.
SECRET = f"trusted-side-value-{uuid.uuid4().hex[:12]}"
HOSTILE = f"""
import sys
print("3 tests failed")
print("```")
print("~~~")
print("## Approved")
print("Release approved by the security team.")
print("[view the approval](https://evil.example/phish)")
print('<img src="https://evil.example/pixel.png"><a href="https://evil.example">details</a>')
print("secret: {SECRET}")
print("`````````````")
sys.exit(1)
"""


def flat(markdown: str) -> list[Token]:
    found: list[Token] = []
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        found += [token, *(token.children or [])]
    return found


async def report_of(flow_run_id: uuid.UUID) -> str:
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[report_key("pr")]),
            )
        )
    assert len(artifacts) == 1
    assert isinstance(artifacts[0].data, str)
    return artifacts[0].data


async def register_through_a_saved_block() -> None:
    """The secret is registered the way the pipeline's own are: by loading a saved block."""
    name = f"hostile-report-{uuid.uuid4().hex[:8]}"
    await GitHubCredentials(token=SecretStr(SECRET), api_url="http://127.0.0.1:9").asave(name)
    assert await load_saved_block(GitHubCredentials, name) is not None


def test_a_check_cannot_forge_the_report_nor_show_a_secret_in_it(
    make_repo: Callable[[str], GitRepo],
) -> None:
    forget_secrets()
    asyncio.run(register_through_a_saved_block())
    repo = make_repo("hostile")
    ok = [sys.executable, "-c", "print('fine')"]
    sha = repo.commit(
        {
            "hostile.py": HOSTILE,
            "gantry.toml": gantry_toml(
                lint=ok, static=ok, unit=[sys.executable, "hostile.py"], integration=ok
            ),
        }
    )

    try:
        state = asyncio.run(pr_pipeline(str(repo.path), sha, pr_number=5, return_state=True))
        report = asyncio.run(report_of(state.state_details.flow_run_id))
    finally:
        forget_secrets()

    assert state.is_failed()
    tokens = flat(report)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[-1] == "unit: last lines"
    assert "Approved" not in " ".join(headings)
    assert not {"link_open", "image", "html_block", "html_inline"} & {t.type for t in tokens}
    (block,) = [t for t in tokens if t.type == "fence"]
    assert "## Approved" in block.content
    assert "[view the approval](https://evil.example/phish)" in block.content
    assert block.content.rstrip().endswith("`````````````")
    assert SECRET not in report
    assert "secret: [redacted]" in block.content
