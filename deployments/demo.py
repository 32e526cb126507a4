"""`make demo`: the sample service through Gantry's pipelines on the local stack."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import FlowRun
from rich.console import Console
from rich.status import Status

from core.approvals import ApprovalError, allowed_signer_line, generate_key
from core.links import flow_run_url
from core.ports import StackError
from core.release_policy import (
    PolicyError,
    ReleasePolicy,
    load_release_policy,
    policy_path,
    write_policy,
)
from core.settings import (
    MERGE_DEPLOYMENT,
    PR_DEPLOYMENT,
    RELEASE_DEPLOYMENT,
    StackSettings,
)
from deployments.runs import RunError, RunOutcome, answer_approval, run_pipeline
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


# The demo's approver: not the demo commits' author (demo@gantry.invalid), so no self-approval.
DEMO_APPROVER = "approver@gantry.invalid"


def demo_key(state_dir: Path) -> Path:
    """The demo approver's SSH key, made once in the state folder (0600)."""
    return state_dir / "demo" / "approver_ed25519"


def ensure_demo_policy(state_dir: Path, out: Console) -> Path:
    """The demo approver's key, and a release policy file listing it as the allowed signer.

    A policy file that is already there is kept as it is: it must list the demo approver's key,
    or the demo stops and says so (it never rewrites someone's policy).
    """
    key = demo_key(state_dir)
    signer = allowed_signer_line(DEMO_APPROVER, generate_key(key, DEMO_APPROVER))
    path = policy_path()
    if not path.exists():
        # The demo has no Snyk token, so its scans are skipped: said so here, on purpose.
        write_policy(path, ReleasePolicy(allowed_signers=[signer], allow_unscanned=True))
        out.print(f"Wrote the release policy {path}: allowed signer {DEMO_APPROVER}")
        return key
    try:
        policy = load_release_policy(path)
    except PolicyError as exc:
        raise StackError(str(exc)) from None
    if signer not in policy.allowed_signers:
        raise StackError(
            f"the release policy {path} does not list the demo approver's key; add this line "
            f"to its allowed_signers, or remove the file to let the demo write one:\n  {signer}"
        )
    return key


class Demo:
    """PR → merge → staging → approved release → production, on the local stack."""

    def __init__(self, out: Console, err: Console, manual: bool) -> None:
        self.out, self.err, self.manual = out, err, manual
        self.settings = StackSettings()
        self.key = demo_key(self.settings.state_dir)

    def _progress(self, spinner: Status) -> Callable[[str], None]:
        def progress(message: str) -> None:
            spinner.update(message)
            self.err.print(f"  {message}", highlight=False)

        return progress

    def pipeline(
        self,
        pipeline: str,
        deployment: str,
        parameters: dict[str, Any],
        on_paused: Callable[[FlowRun], Awaitable[bool]] | None = None,
    ) -> RunOutcome:
        from deployments.cli.console import print_outcome

        self.out.rule(f"{pipeline} pipeline")
        with self.err.status(f"{pipeline} pipeline") as spinner:
            outcome = asyncio.run(
                run_pipeline(
                    pipeline,
                    deployment,
                    parameters,
                    self.settings.prefect_url,
                    self._progress(spinner),
                    on_paused=on_paused,
                )
            )
        print_outcome(outcome, as_json=False)
        return outcome

    async def approve(self, flow_run: FlowRun) -> bool:
        if self.manual:
            self.out.print(
                f"Waiting for your approval: the Prefect UI "
                f"({flow_run_url(flow_run.id, self.settings.prefect_url)}) or "
                f"`gantry approve {flow_run.id} --key {self.key}` (the demo approver's key; "
                "yours works once it is on the release policy's allowed signers)."
            )
            return True
        self.out.print(
            f"The release waits at its approval gate; the demo signs the approval as "
            f"[bold]{DEMO_APPROVER}[/bold] (the policy's allowed signer) with its key, as "
            f"`gantry approve {flow_run.id} --key {self.key}` does."
        )
        answer = await answer_approval(str(flow_run.id), "approve", "make demo", self.key, wait=60)
        if not answer.accepted:
            self.err.print(f"[red]the approval was refused:[/red] {answer.message}")
        return True

    def run(self) -> int:
        repo, sha = prepare_sample_repo(self.settings.state_dir)
        self.out.print(f"Sample service repository: {repo} at {sha[:12]}")
        self.out.print(f"Prefect UI: [bold]{self.settings.prefect_url}[/bold]")
        pr = self.pipeline(
            "pr",
            PR_DEPLOYMENT,
            {"repository": str(repo), "sha": sha, "pr_number": 1, "head_ref": "demo"},
        )
        if not pr.passed:
            return 1
        merge = self.pipeline("merge", MERGE_DEPLOYMENT, {"repository": str(repo), "sha": sha})
        if not merge.passed:
            return 1
        self.out.print(
            f"Staging serves {merge.data.get('images')} at [bold]"
            f"{merge.data.get('staging_url')}[/bold]; release candidate "
            f"{merge.data.get('release_candidate')} recorded."
        )
        ensure_demo_policy(self.settings.state_dir, self.out)
        release = self.pipeline(
            "release",
            RELEASE_DEPLOYMENT,
            {
                "repository": str(repo),
                "candidate_id": merge.data.get("release_candidate"),
                "triggered_by": "make demo",
            },
            on_paused=self.approve,
        )
        if not release.passed:
            return 1
        self.out.rule("done")
        self.out.print(
            f"Production serves the same digests at [bold]"
            f"{release.data.get('production_url')}[/bold].\n"
            f"Every run is in the Prefect UI: {self.settings.prefect_url}/runs\n"
            "The stack keeps running; `.venv/bin/gantry down` stops it."
        )
        return 0


def run_demo(out: Console, err: Console, manual: bool = False) -> int:
    from deployments.cli.console import ensure_stack, prefect_settings

    demo = Demo(out, err, manual)
    try:
        ensure_stack(demo.settings)
        with prefect_settings(demo.settings):
            return demo.run()
    except (StackError, RunError, ApprovalError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
