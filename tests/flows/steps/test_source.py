"""Where a run's code comes from: a run that carries a GitHub id is cloned from the worker's Git
host only, never from a location it names (the pr and merge pipelines and a release's tag lookup
all ask ``run_source``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.identity import RepositoryIdentity, identity_of
from flows.pipelines.candidates import release_candidate
from flows.steps.checkout import CheckoutError
from flows.steps.source import run_source

NAMED = "acme/api"
LOCATIONS = ["/srv/git/acme/api", "file:///srv/git/acme/api", "https://evil.example/acme/api.git"]


@pytest.fixture(autouse=True)
def git_host(monkeypatch: pytest.MonkeyPatch) -> str:
    base = "https://git.example.com/"
    monkeypatch.setenv("GANTRY_GIT_BASE_URL", base)
    return base


@pytest.mark.parametrize("location", LOCATIONS)
def test_a_run_with_a_github_id_cannot_also_name_a_location(location: str) -> None:
    with pytest.raises(CheckoutError, match="cloned from the configured Git host only"):
        run_source(location, identity_of(location, NAMED, 1234))


def test_a_run_with_a_github_id_is_cloned_from_the_git_host(git_host: str) -> None:
    assert run_source(None, identity_of(None, NAMED, 1234)) == f"{git_host}{NAMED}.git"


@pytest.mark.parametrize("location", LOCATIONS)
def test_an_operators_run_without_an_id_checks_out_the_location_it_names(location: str) -> None:
    assert run_source(location, identity_of(location, None)) == location


def test_a_release_by_tag_with_a_github_id_and_a_location_finds_no_candidate(
    tmp_path: Path,
) -> None:
    identity = RepositoryIdentity(full_name=NAMED, id=1234)
    found, asked = asyncio.run(release_candidate(identity, str(tmp_path), None, "v1.0.0"))
    assert found is None
    assert "could not be resolved" in asked and "Git host only" in asked
