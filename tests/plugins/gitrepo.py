"""Real git repositories in temp folders, built commit by commit for pipeline tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

GIT_ENV_ARGS = ["-c", "user.name=Test", "-c", "user.email=test@example.invalid"]


class GitRepo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "--quiet", "--initial-branch=main")

    def git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(self.path), *GIT_ENV_ARGS, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return result.stdout.strip()

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        self.write(files)
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


def gantry_toml(**checks: list[str] | None) -> str:
    """A gantry.toml whose [checks] are the given argv lists (None: not declared)."""
    lines = ["[checks]"]
    for name, argv in checks.items():
        if argv is not None:
            quoted = ", ".join(
                '"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"' for a in argv
            )
            lines.append(f"{name} = [{quoted}]")
    return "\n".join(lines) + "\n"


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[str], GitRepo]:
    def factory(name: str = "repo") -> GitRepo:
        return GitRepo(tmp_path / name)

    return factory
