import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.steps.checkout import CheckoutError, materialize, validate_repository
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
