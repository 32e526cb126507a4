"""Which release candidate a release asks for: by id, by its tag's commit, or the newest."""

from __future__ import annotations

from core.identity import RepositoryIdentity
from flows.records.store import ReleaseCandidate, find_candidate
from flows.steps.checkout import CheckoutError
from flows.steps.source import run_source, tag_commit


async def release_candidate(
    identity: RepositoryIdentity,
    repository: str | None,
    candidate_id: str | None,
    tag: str | None,
) -> tuple[ReleaseCandidate | None, str]:
    """The candidate to release, and what was asked for (for the refusal when there is none).

    A tag (a GitHub release) is resolved to its commit, asked of the repository's host, and
    only the candidate of exactly that commit of this repository is released: never the newest
    one instead. A tag that cannot be resolved, or whose commit has no candidate, finds none.
    """
    if tag is None:
        return await find_candidate(identity, candidate_id), candidate_id or "any"
    try:
        sha = await tag_commit(identity, run_source(repository, identity), tag)
    except CheckoutError as exc:
        return None, f"of tag {tag!r} (it could not be resolved: {exc})"
    found = await find_candidate(identity, candidate_id, commit_sha=sha)
    return found, f"of tag {tag!r} (commit {sha[:12]})"
