from pathlib import Path

from deployments.demo import prepare_sample_repo


def test_the_sample_repo_keeps_its_commit_when_nothing_changed(tmp_path: Path) -> None:
    repo, first = prepare_sample_repo(tmp_path)
    assert (repo / "gantry.toml").is_file()
    again, second = prepare_sample_repo(tmp_path)
    assert again == repo
    assert second == first
    assert not list(repo.rglob("__pycache__"))
