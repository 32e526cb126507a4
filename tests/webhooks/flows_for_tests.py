"""Stand-in flows with the pipelines' names and parameters: dispatch needs deployments, not work.

No worker runs them: a flow run created in the Scheduled state is what dispatch produces.
"""

from __future__ import annotations

from prefect import flow


@flow(name="pr-pipeline")
async def pr_pipeline(
    repository: str | None,
    sha: str,
    pr_number: int | None = None,
    head_ref: str | None = None,
    fork: bool = False,
    repository_name: str | None = None,
    repository_id: int | None = None,
) -> None:
    del repository, sha, pr_number, head_ref, fork, repository_name, repository_id


@flow(name="merge-pipeline")
async def merge_pipeline(
    repository: str | None,
    sha: str,
    ref: str = "main",
    repository_name: str | None = None,
    repository_id: int | None = None,
) -> None:
    del repository, sha, ref, repository_name, repository_id


@flow(name="release-pipeline")
async def release_pipeline(
    repository_name: str | None = None,
    repository_id: int | None = None,
    candidate_id: str | None = None,
    tag: str | None = None,
    triggered_by: str | None = None,
) -> None:
    del repository_name, repository_id, candidate_id, tag, triggered_by


async def register_deployments() -> None:
    """Create the pr, merge and release deployments (names as core/settings.py)."""
    for stand_in, name in (
        (pr_pipeline, "pr"),
        (merge_pipeline, "merge"),
        (release_pipeline, "release"),
    ):
        deployment = await stand_in.ato_deployment(name=name)
        await deployment.aapply()
