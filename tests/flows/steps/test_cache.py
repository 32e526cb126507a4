"""The content-addressed step cache, on real runs against a real Prefect server."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from flows.config import Checks, Sandbox, load_config
from flows.pipelines.pr import pr_pipeline
from flows.pipelines.stages import PipelineSummary
from flows.steps.cache import (
    CACHE_EXPIRATION,
    DEFAULT_TOOLCHAIN,
    SHARED_SCOPE,
    cache_scope,
    check_key,
    inputs_digest,
    step_key,
)
from flows.steps.checks import run_check
from tests.plugins.gitrepo import GitRepo

PY = sys.executable


class Ledger:
    """How many times each stage really ran its command, across the runs of one test.

    A step runs in a sandbox that sees only its checkout, so it cannot count itself; its result
    names the flow run that produced it instead, and a re-used result names an earlier run.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        # The cache is content-addressed across repositories and the session's server keeps
        # results: a token of the test's own keeps other tests' identical checks from serving it.
        self.token = uuid.uuid4().hex

    def command(self, *extra: str, fail: bool = False) -> list[str]:
        """A check command; ``extra`` arguments make a different command with the same effect."""
        return [PY, "-c", "raise SystemExit(1)" if fail else "pass", self.token, *extra]

    def record(self, flow_run_id: str, summary: PipelineSummary) -> None:
        for stage in summary.stages:
            if stage.data.get("flow_run_id") == flow_run_id:
                self.counts[stage.name] += 1

    def runs(self, stage: str) -> int:
        return self.counts[stage]


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def toml_for(
    commands: dict[str, list[str]],
    inputs: dict[str, list[str]] | None = None,
    env: dict[str, dict[str, str]] | None = None,
) -> str:
    lines = ["[checks]"]
    for stage, argv in commands.items():
        quoted = ", ".join(f'"{a}"' for a in argv).replace("\\n", "\\\\n")
        extra = ""
        if inputs and stage in inputs:
            extra = ", inputs = [" + ", ".join(f'"{g}"' for g in inputs[stage]) + "]"
        if env and stage in env:
            extra += ", env = { " + ", ".join(f'{k} = "{v}"' for k, v in env[stage].items()) + " }"
        lines.append(f"{stage} = {{ command = [{quoted}]{extra} }}")
    return "\n".join(lines) + "\n"


def run(
    repo: GitRepo,
    sha: str,
    ledger: Ledger,
    no_cache: bool = False,
    pr_number: int = 9,
    fork: bool = False,
) -> dict[str, str]:
    state = asyncio.run(
        pr_pipeline(
            str(repo.path),
            sha,
            pr_number=pr_number,
            fork=fork,
            no_cache=no_cache,
            return_state=True,
        )
    )
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, PipelineSummary)
    ledger.record(str(state.state_details.flow_run_id), summary)
    return {s.name: s.status.value for s in summary.stages}


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_an_unchanged_commit_reuses_passing_results_and_does_no_step_work(
    make_repo: Callable[[str], GitRepo], ledger: Ledger
) -> None:
    repo = make_repo("cache-hit")
    sha = repo.commit({"gantry.toml": toml_for({"lint": ledger.command()})})
    assert run(repo, sha, ledger)["lint"] == "passed"
    assert run(repo, sha, ledger)["lint"] == "cached"
    assert ledger.runs("lint") == 1


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_a_failure_is_never_reused(make_repo: Callable[[str], GitRepo], ledger: Ledger) -> None:
    repo = make_repo("cache-failure")
    sha = repo.commit({"gantry.toml": toml_for({"unit": ledger.command(fail=True)})})
    assert run(repo, sha, ledger)["unit"] == "failed"
    assert run(repo, sha, ledger)["unit"] == "failed"
    assert ledger.runs("unit") == 2


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_no_cache_runs_every_step_afresh(
    make_repo: Callable[[str], GitRepo], ledger: Ledger
) -> None:
    repo = make_repo("cache-refresh")
    sha = repo.commit({"gantry.toml": toml_for({"lint": ledger.command()})})
    run(repo, sha, ledger)
    assert run(repo, sha, ledger, no_cache=True)["lint"] == "passed"
    assert ledger.runs("lint") == 2


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_a_docs_only_change_reruns_only_the_steps_that_read_docs(
    make_repo: Callable[[str], GitRepo], ledger: Ledger
) -> None:
    repo = make_repo("cache-inputs")
    commands = {"lint": ledger.command(), "unit": ledger.command()}
    toml = toml_for(commands, inputs={"unit": ["src/**"], "lint": ["**"]})
    first = repo.commit({"gantry.toml": toml, "src/app.py": "x = 1\n", "docs/a.md": "one"})
    run(repo, first, ledger)
    second = repo.commit({"docs/a.md": "two"})
    statuses = run(repo, second, ledger)
    assert statuses == {
        "lint": "passed",
        "static": "skipped",
        "unit": "cached",
        "integration": "skipped",
        "build": "skipped",
        "scan": "skipped",
    }
    assert (ledger.runs("lint"), ledger.runs("unit")) == (2, 1)


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


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_a_changed_command_or_environment_reruns_the_step(
    make_repo: Callable[[str], GitRepo], ledger: Ledger
) -> None:
    # The step reads only src/**: gantry.toml is outside its inputs, so only the key's own
    # record of the command and the environment can tell these runs apart.
    repo = make_repo("cache-config")
    lint = ledger.command()
    inputs = {"lint": ["src/**"]}
    files = {"src/app.py": "x = 1\n"}
    first = repo.commit(
        {**files, "gantry.toml": toml_for({"lint": lint}, inputs, {"lint": {"MODE": "a"}})}
    )
    assert run(repo, first, ledger)["lint"] == "passed"
    assert run(repo, first, ledger)["lint"] == "cached"
    new_command = repo.commit(
        {"gantry.toml": toml_for({"lint": ledger.command("--x")}, inputs, {"lint": {"MODE": "a"}})}
    )
    assert run(repo, new_command, ledger)["lint"] == "passed"
    new_env = repo.commit(
        {"gantry.toml": toml_for({"lint": ledger.command("--x")}, inputs, {"lint": {"MODE": "b"}})}
    )
    assert run(repo, new_env, ledger)["lint"] == "passed"
    assert run(repo, new_env, ledger)["lint"] == "cached"
    assert ledger.runs("lint") == 3


@pytest.mark.slow
@pytest.mark.usefixtures("local_stack")
def test_a_fork_result_serves_only_runs_of_its_own_pull_request(
    make_repo: Callable[[str], GitRepo], ledger: Ledger
) -> None:
    repo = make_repo("cache-fork")
    sha = repo.commit({"gantry.toml": toml_for({"lint": ledger.command()})})
    assert run(repo, sha, ledger, pr_number=9, fork=True)["lint"] == "passed"
    assert run(repo, sha, ledger, pr_number=9, fork=True)["lint"] == "cached"
    # Same commit, same config: another fork's pull request and a trusted run still run it.
    assert run(repo, sha, ledger, pr_number=10, fork=True)["lint"] == "passed"
    assert run(repo, sha, ledger, pr_number=9, fork=False)["lint"] == "passed"
    assert ledger.runs("lint") == 3


def test_merge_and_release_runs_share_the_trusted_scope_and_never_a_forks() -> None:
    merge = {"repository": "/src/shop", "sha": "a" * 40, "ref": "main"}
    fork_pr = {"repository": "/src/shop", "sha": "a" * 40, "pr_number": 9, "fork": True}
    assert cache_scope(merge) == SHARED_SCOPE
    assert cache_scope({**fork_pr, "fork": False}) == SHARED_SCOPE
    assert cache_scope(fork_pr) not in {SHARED_SCOPE, None}
    assert cache_scope(fork_pr) != cache_scope({**fork_pr, "pr_number": 10})
    assert cache_scope(fork_pr) != cache_scope({**fork_pr, "repository": "/src/other"})
    # A fork's run that names no pull request could be re-used by nobody it belongs to.
    assert cache_scope({**fork_pr, "pr_number": None}) is None


def test_a_fork_run_without_a_pull_request_number_is_never_cached(
    make_repo: Callable[[str], GitRepo],
) -> None:
    repo = make_repo("fork-no-pr")
    repo.commit({"gantry.toml": "", "src/a.py": "1"})
    checks = Checks.model_validate({"lint": {"command": ["true"]}})
    assert check_key("lint", checks, Sandbox(), repo.path, {"fork": True}) is None
    assert (
        check_key("lint", checks, Sandbox(), repo.path, {"fork": True, "pr_number": 4}) is not None
    )


def test_the_key_follows_the_sandbox_toolchain_limits_and_network_of_gantry_toml(
    make_repo: Callable[[str], GitRepo],
) -> None:
    repo = make_repo("sandbox-key")
    # The step reads src/** only, so gantry.toml's own content changes no input digest.
    step = {"command": ["true"], "inputs": ["src/**"]}
    checks = Checks.model_validate({"lint": step})
    keys = []
    for toml in ("", '[sandbox]\nimage = "python:3.12"\n', "[sandbox]\nmemory_mb = 4096\n"):
        repo.commit({"gantry.toml": toml, "src/a.py": "1"})
        sandbox = load_config(repo.path).sandbox  # parsed once by the pipeline, before any step
        keys.append(check_key("lint", checks, sandbox, repo.path, {}))
    outside = Checks.model_validate({"lint": {**step, "network": "outside"}})
    keys.append(check_key("lint", outside, sandbox, repo.path, {}))
    report = {"format": "ruff", "path": "ruff.json"}
    reported = Checks.model_validate({"lint": {**step, "network": "outside", "report": report}})
    keys.append(check_key("lint", reported, sandbox, repo.path, {}))
    assert None not in keys
    assert len(set(keys)) == 5
    # A step that rewrites the checkout's gantry.toml changes neither the key nor the sandbox.
    (repo.path / "gantry.toml").write_text("[checks\n")
    assert check_key("lint", reported, sandbox, repo.path, {}) == keys[-1]


def test_the_key_follows_the_toolchain_and_the_scope() -> None:
    base = step_key("unit", ["pytest"], {}, "tree")
    assert base == step_key("unit", ["pytest"], {}, "tree", toolchain=DEFAULT_TOOLCHAIN)
    assert base != step_key("unit", ["pytest"], {}, "tree", toolchain="python:3.12@sha256:ab")
    assert base != step_key("unit", ["pytest"], {}, "tree", scope="fork:acme/shop#9")
    assert base != step_key("unit", ["pytest", "-x"], {}, "tree")
    assert base != step_key("unit", ["pytest"], {"CI": "1"}, "tree")


def test_cached_check_results_expire() -> None:
    assert run_check.cache_expiration == CACHE_EXPIRATION
    assert CACHE_EXPIRATION.days == 7
