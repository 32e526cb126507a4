import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from flows.steps.proc import ProcResult, run_argv, step_env

LOG = logging.getLogger("test.proc")


def run(argv: list[str], tmp_path: Path, timeout: float = 30, prefix: str = "") -> ProcResult:
    return asyncio.run(run_argv(argv, cwd=tmp_path, timeout=timeout, logger=LOG, prefix=prefix))


def test_output_lines_reach_the_logger_as_they_arrive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="test.proc")
    script = (
        "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.1)"
    )
    result = run([sys.executable, "-c", script], tmp_path, prefix="[x] ")
    assert result.ok
    stamps = [r.created for r in caplog.records if r.getMessage().startswith("[x] line")]
    assert [r.getMessage() for r in caplog.records if "[x]" in r.getMessage()] == [
        "[x] line 0",
        "[x] line 1",
        "[x] line 2",
    ]
    # Streamed, not dumped at the end: the lines were logged ~0.1 s apart.
    assert stamps[-1] - stamps[0] >= 0.15


def test_non_zero_exit_is_reported_with_the_tail(tmp_path: Path) -> None:
    result = run([sys.executable, "-c", "print('boom'); raise SystemExit(4)"], tmp_path)
    assert not result.ok
    assert result.exit_code == 4
    assert result.tail == "boom"
    assert result.describe() == "exit code 4"


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    # The command starts a grandchild that would outlive a naive kill of the parent.
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    result = run([sys.executable, "-c", script], tmp_path, timeout=1.5)
    assert result.timed_out
    assert result.describe().startswith("timed out after")
    child = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        asyncio.run(asyncio.sleep(0.1))
    else:
        pytest.fail("the grandchild process survived the timeout")


def test_a_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    result = run(["gantry-no-such-tool", "--flag"], tmp_path)
    assert not result.ok
    assert result.describe() == "command not found: 'gantry-no-such-tool' is not on PATH"


def test_shell_syntax_in_argv_is_inert(tmp_path: Path) -> None:
    result = run(["echo", "$(touch pwned)", ";", "touch", "pwned2"], tmp_path)
    assert result.ok
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()
    assert result.tail == "$(touch pwned) ; touch pwned2"


def test_steps_do_not_inherit_secrets_from_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_GITHUB_TOKEN", "ghp_not_for_steps")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    env = step_env({"EXTRA": "1"})
    assert "GANTRY_GITHUB_TOKEN" not in env
    assert "PREFECT_API_KEY" not in env
    assert env["EXTRA"] == "1"
    assert env["CI"] == "true"
    assert "PATH" in env
