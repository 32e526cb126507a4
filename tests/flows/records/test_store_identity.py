"""Candidates are bound to their repository's identity, read back from a real Prefect server."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from core.identity import RepositoryIdentity
from deployments.prefect_server import PrefectServer
from flows.records.store import ReleaseCandidate, find_candidate, record_candidate

pytestmark = pytest.mark.slow


def candidate(identity: RepositoryIdentity, sha: str) -> ReleaseCandidate:
    return ReleaseCandidate(
        id=f"rc-{uuid.uuid4().hex[:8]}",
        repository=f"https://github.com/{identity.full_name}.git",
        repository_slug=identity.slug,
        repository_name=identity.full_name,
        repository_full_name=identity.full_name,
        repository_id=identity.id,
        commit_sha=sha,
        images={"web": "registry/web@sha256:" + "c" * 64},
        flow_run_id=str(uuid.uuid4()),
    )


def test_names_differing_only_in_dash_underscore_or_dot_never_share_a_candidate(
    prefect_server: PrefectServer,
) -> None:
    org = f"org{uuid.uuid4().hex[:6]}"
    names = [f"{org}/my-svc", f"{org}/my_svc", f"{org}/my.svc"]
    identities = [RepositoryIdentity(full_name=n, id=i + 1) for i, n in enumerate(names)]
    written = [candidate(identity, str(i) * 40) for i, identity in enumerate(identities)]

    async def scenario() -> list[ReleaseCandidate | None]:
        for record in written:
            await record_candidate(record)
        return [await find_candidate(identity) for identity in identities]

    found = asyncio.run(scenario())
    assert [c.id if c else None for c in found] == [c.id for c in written]


def test_a_lookup_never_returns_a_candidate_of_another_identity(
    prefect_server: PrefectServer,
) -> None:
    name = f"acme/svc-{uuid.uuid4().hex[:6]}"
    from_github = RepositoryIdentity(full_name=name, id=41)
    by_path = candidate(RepositoryIdentity(full_name=name), "d" * 40)  # a CLI run by path
    older = candidate(RepositoryIdentity(full_name=name, id=40), "e" * 40)  # deleted, re-created
    genuine = candidate(from_github, "f" * 40)

    async def scenario() -> tuple[ReleaseCandidate | None, ...]:
        await record_candidate(genuine)
        await record_candidate(older)
        await record_candidate(by_path)
        return (
            await find_candidate(from_github),
            await find_candidate(from_github, commit_sha="d" * 40),
            await find_candidate(from_github, candidate_id=older.id),
            await find_candidate(RepositoryIdentity(full_name=name.upper(), id=41)),
        )

    newest, path_commit, older_id, upper = asyncio.run(scenario())
    assert newest is not None and newest.id == genuine.id
    assert path_commit is None and older_id is None
    assert upper is not None and upper.id == genuine.id
