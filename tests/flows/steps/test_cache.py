"""The content-addressed step cache, on real runs against a real Prefect server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.pipelines.pr import pr_pipeline
from flows.pipelines.stages import PipelineSummary
from flows.steps.cache import inputs_digest
from tests.plugins.gitrepo import GitRepo

PY = sys.executable


def counting(tmp_path: Path, stage: str, fail: bool = False) -> list[str]:
    """A command that appends a line to a counter file each time it really runs."""
    counter = tmp_path / f"{stage}.runs"
    code = f"open({str(counter)!r}, 'a').write('x\\n')" + ("; raise SystemExit(1)" if fail else "")
    return [PY, "-c", code]


def runs(tmp_path: Path, stage: str) -> int:
    counter = tmp_path / f"{stage}.runs"
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def toml_for(commands: dict[str, list[str]], inputs: dict[str, list[str]] | None = None) -> str:
    lines = ["[checks]"]
    for stage, argv in commands.items():
        quoted = ", ".join(f'"{a}"' for a in argv).replace("\\n", "\\\\n")
        extra = ""
        if inputs and stage in inputs:
            extra = ", inputs = [" + ", ".join(f'"{g}"' for g in inputs[stage]) + "]"
        lines.append(f"{stage} = {{ command = [{quoted}]{extra} }}")
    return "\n".join(lines) + "\n"


def run(repo: GitRepo, sha: str, no_cache: bool = False) -> dict[str, str]:
    state = asyncio.run(
        pr_pipeline(str(repo.path), sha, pr_number=9, no_cache=no_cache, return_state=True)
    )
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, PipelineSummary)
    return {s.name: s.status.value for s in summary.stages}


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_an_unchanged_commit_reuses_passing_results_and_does_no_step_work(
    make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    repo = make_repo("cache-hit")
    sha = repo.commit({"gantry.toml": toml_for({"lint": counting(tmp_path, "lint")})})
    assert run(repo, sha)["lint"] == "passed"
    assert run(repo, sha)["lint"] == "cached"
    assert runs(tmp_path, "lint") == 1


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_a_failure_is_never_reused(make_repo: Callable[[str], GitRepo], tmp_path: Path) -> None:
    repo = make_repo("cache-failure")
    sha = repo.commit({"gantry.toml": toml_for({"unit": counting(tmp_path, "unit", fail=True)})})
    assert run(repo, sha)["unit"] == "failed"
    assert run(repo, sha)["unit"] == "failed"
    assert runs(tmp_path, "unit") == 2


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_no_cache_runs_every_step_afresh(
    make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    repo = make_repo("cache-refresh")
    sha = repo.commit({"gantry.toml": toml_for({"lint": counting(tmp_path, "lint")})})
    run(repo, sha)
    assert run(repo, sha, no_cache=True)["lint"] == "passed"
    assert runs(tmp_path, "lint") == 2


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_a_docs_only_change_reruns_only_the_steps_that_read_docs(
    make_repo: Callable[[str], GitRepo], tmp_path: Path
) -> None:
    repo = make_repo("cache-inputs")
    commands = {"lint": counting(tmp_path, "lint"), "unit": counting(tmp_path, "unit")}
    toml = toml_for(commands, inputs={"unit": ["src/**"], "lint": ["**"]})
    first = repo.commit({"gantry.toml": toml, "src/app.py": "x = 1\n", "docs/a.md": "one"})
    run(repo, first)
    second = repo.commit({"docs/a.md": "two"})
    statuses = run(repo, second)
    assert statuses == {
        "lint": "passed",
        "static": "skipped",
        "unit": "cached",
        "integration": "skipped",
        "build": "skipped",
        "scan": "skipped",
    }
    assert (runs(tmp_path, "lint"), runs(tmp_path, "unit")) == (2, 1)


def test_the_inputs_digest_follows_content_not_commits(
    make_repo: Callable[[str], GitRepo],
) -> None:
    repo = make_repo("digest")
    repo.commit({"src/a.py": "1", "README.md": "a"})
    before_all = inputs_digest(repo.path, None)
    before_src = inputs_digest(repo.path, ["src/**"])
    repo.commit({"README.md": "b"})
    assert inputs_digest(repo.path, ["src/**"]) == before_src
    assert inputs_digest(repo.path, None) != before_all
    repo.commit({}, message="empty commit")
    assert inputs_digest(repo.path, ["src/**"]) == before_src
