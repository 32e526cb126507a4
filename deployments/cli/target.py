"""The repository and commit a `gantry run` names, resolved before anything slow is loaded."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

# A full commit id, SHA-1 or SHA-256 (what the checkout step accepts for a remote repository).
FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class TargetError(ValueError):
    """The repository or commit named on the command line does not exist."""


def resolve_target(repo: str, sha: str) -> tuple[str, str]:
    """A local path becomes absolute and a ref or short SHA is resolved; URLs need a full SHA."""
    path = Path(repo)
    if path.is_dir():
        found = subprocess.run(
            [
                "git",
                "-C",
                str(path),
                "rev-parse",
                "--verify",
                "--end-of-options",
                f"{sha}^{{commit}}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if found.returncode != 0:
            raise TargetError(f"{sha!r} is not a commit of {repo}: {found.stderr.strip()}")
        return str(path.resolve()), found.stdout.strip()
    if not FULL_SHA.match(sha):
        raise TargetError(f"for a remote repository, --sha must be a full commit SHA, not {sha!r}")
    return repo, sha
