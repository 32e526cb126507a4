"""A generated repository whose check steps take known times (sleep-based)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

STEP_SECONDS = {"lint": 0.5, "static": 1.0, "unit": 2.0, "integration": 3.0}


def step_argv(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def make_repo(root: Path, salt: str) -> tuple[Path, str]:
    """A git repository with a gantry.toml of sleep steps; ``salt`` makes its tree unique."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["[checks]"]
    for stage, seconds in STEP_SECONDS.items():
        argv = ", ".join(f'"{a}"' for a in step_argv(seconds))
        lines.append(f"{stage} = [{argv}]")
    (root / "gantry.toml").write_text("\n".join(lines) + "\n")
    (root / "SALT").write_text(salt)
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@gantry.invalid"]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *identity, *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()

    git("init", "--quiet", "--initial-branch=main")
    git("add", "--all")
    git("commit", "--quiet", "-m", "bench")
    return root, git("rev-parse", "HEAD")
