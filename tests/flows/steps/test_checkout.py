import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.steps.checkout import (
    CheckoutError,
    SourceSettings,
    check_source,
    materialize,
    tag_commit_in,
    validate_repository,
)
from tests.plugins.gitrepo import GitRepo


def test_the_exact_commit_is_materialized_not_the_branch_head(
    make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    repo = make_repo("src")
    first = repo.commit({"app.txt": "v1"})
    repo.commit({"app.txt": "v2"})
    workspace = tmp_path / "ws"
    workspace.mkdir()
    asyncio.run(materialize(str(repo.path), first, workspace))
    assert (workspace / "app.txt").read_text() == "v1"


def test_an_unknown_sha_fails_with_a_clear_message(
    make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    repo = make_repo("src")
    repo.commit({"a": "1"})
    workspace = tmp_path / "ws"
    workspace.mkdir()
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(CheckoutError, match=f"commit {missing} does not exist|cannot fetch"):
        asyncio.run(materialize(str(repo.path), missing, workspace))


def test_an_unreachable_repository_fails_with_a_clear_message(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with pytest.raises(CheckoutError, match="cannot fetch from"):
        asyncio.run(materialize(str(tmp_path / "nowhere"), "a" * 40, workspace))


@pytest.mark.parametrize(
    "repository", ["--upload-pack=touch /tmp/x", "ext::sh -c touch% /tmp/x", "", "a\nb"]
)
def test_option_like_or_command_transports_are_refused(repository: str) -> None:
    with pytest.raises(CheckoutError):
        validate_repository(repository)


def test_a_short_or_non_hex_sha_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckoutError, match="not a full commit SHA"):
        asyncio.run(materialize(str(tmp_path), "HEAD", tmp_path))


@pytest.mark.parametrize(
    "repository",
    [
        "http://github.com/acme/api.git",
        "ssh://git@github.com/acme/api.git",
        "git://github.com/acme/api.git",
        "git@github.com:acme/api.git",
        "ftp://example.com/acme/api.git",
    ],
)
def test_schemes_other_than_https_and_file_are_refused(repository: str) -> None:
    allowed = SourceSettings(allow_file_repositories=True)
    with pytest.raises(CheckoutError, match="is not allowed: only https"):
        check_source(repository, allowed)


def test_https_is_fetched_and_file_only_when_the_operator_enables_it(tmp_path: Path) -> None:
    closed = SourceSettings(allow_file_repositories=False)
    assert check_source("https://github.com/acme/api.git", closed).startswith("https://")
    for local in (str(tmp_path), tmp_path.as_uri()):
        with pytest.raises(CheckoutError, match="GANTRY_ALLOW_FILE_REPOSITORIES=1"):
            check_source(local, closed)
        assert check_source(local, SourceSettings(allow_file_repositories=True))


def test_a_local_repository_is_not_fetched_unless_enabled(
    make_repo: Callable[[str], GitRepo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo("src")
    sha = repo.commit({"app.txt": "v1"})
    workspace = tmp_path / "ws"
    workspace.mkdir()
    monkeypatch.setenv("GANTRY_ALLOW_FILE_REPOSITORIES", "0")
    with pytest.raises(CheckoutError, match="local repositories are not allowed"):
        asyncio.run(materialize(repo.path.as_uri(), sha, workspace))
    assert not (workspace / "app.txt").exists()


def test_a_tag_resolves_to_its_commit_lightweight_or_annotated(
    make_repo: Callable[[str], GitRepo], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GANTRY_HOME", str(tmp_path / "home"))
    repo = make_repo("tagged")
    first = repo.commit({"app.txt": "v1"})
    repo.git("tag", "v1")
    repo.git("tag", "-a", "v1-annotated", "-m", "release v1")
    repo.commit({"app.txt": "v2"})
    assert asyncio.run(tag_commit_in(str(repo.path), "v1")) == first
    assert asyncio.run(tag_commit_in(repo.path.as_uri(), "v1-annotated")) == first
    with pytest.raises(CheckoutError, match="not found"):
        asyncio.run(tag_commit_in(str(repo.path), "v9"))
    with pytest.raises(CheckoutError, match="not a tag name"):
        asyncio.run(tag_commit_in(str(repo.path), "--upload-pack=x"))
