"""`make demo`: the sample service through Gantry's pipelines on the local stack."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from rich.console import Console

from deployments.processes import StackError
from deployments.settings import PR_DEPLOYMENT, StackSettings
from deployments.stack import PROJECT_DIR

SAMPLE = PROJECT_DIR / "examples" / "sample-service"
IGNORED = shutil.ignore_patterns(
    "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.pyc", ".venv"
)
GIT_IDENTITY = ["-c", "user.name=Gantry Demo", "-c", "user.email=demo@gantry.invalid"]


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *GIT_IDENTITY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


def prepare_sample_repo(state_dir: Path, source: Path = SAMPLE) -> tuple[Path, str]:
    """The sample service as a git repository in the state folder; returns (path, HEAD SHA).

    Re-running commits only what changed, so the same content keeps the same commit.
    """
    repo = state_dir / "demo" / "sample-service"
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "--quiet", "--initial-branch=main")
    for child in repo.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    shutil.copytree(source, repo, ignore=IGNORED, dirs_exist_ok=True)
    _git(repo, "add", "--all")
    if _git(repo, "status", "--porcelain"):
        _git(repo, "commit", "--quiet", "-m", "tasks-api: sample service")
    return repo, _git(repo, "rev-parse", "HEAD")


def run_demo(out: Console, err: Console) -> int:
    from deployments.cli import ensure_stack, prefect_settings, print_outcome
    from deployments.runs import RunError, run_pipeline

    settings = StackSettings()
    try:
        ensure_stack(settings)
    except StackError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    repo, sha = prepare_sample_repo(settings.state_dir)
    out.print(f"Sample service repository: {repo} at {sha[:12]}")
    out.print(f"Prefect UI: [bold]{settings.prefect_url}[/bold]")
    parameters = {"repository": str(repo), "sha": sha, "pr_number": 1, "head_ref": "demo"}
    with prefect_settings(settings), err.status("pull-request pipeline") as spinner:

        def progress(message: str) -> None:
            spinner.update(message)
            err.print(f"  {message}", highlight=False)

        try:
            outcome = asyncio.run(
                run_pipeline("pr", PR_DEPLOYMENT, parameters, settings.prefect_url, progress)
            )
        except RunError as exc:
            err.print(f"[red]error:[/red] {exc}")
            return 2
    print_outcome(outcome, as_json=False)
    if not outcome.passed:
        return 1
    out.print(
        f"\nThe pull-request run is in the Prefect UI: {outcome.url}\n"
        "The stack keeps running; `.venv/bin/gantry down` stops it."
    )
    return 0
