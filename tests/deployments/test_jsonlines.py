"""The relay that makes Podman's and the registry's logs JSON lines like the rest of the stack."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployments.jsonlines import json_relay, parse_line

PY = sys.executable


@pytest.mark.parametrize(
    ("line", "level", "message"),
    [
        (
            'time="2026-11-26T23:01:02Z" level=warning msg="Failed to \\"prune\\" cache"',
            logging.WARNING,
            'Failed to "prune" cache',
        ),
        ('time="x" level=error msg=boom go.version=go1.22', logging.ERROR, "boom"),
        ('level="info" msg="API service listening"', logging.INFO, "API service listening"),
        ('level=fatal msg="cannot bind"', logging.CRITICAL, "cannot bind"),
        (
            "a plain line with level words but no msg",
            logging.INFO,
            "a plain line with level words but no msg",
        ),
    ],
)
def test_logrus_lines_keep_their_level_and_message(line: str, level: int, message: str) -> None:
    assert parse_line(line) == (level, message)


def relay_run(script: str, tmp_path: Path) -> tuple[int, list[dict[str, object]]]:
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        code = subprocess.run(
            json_relay("podman", [PY, "-c", script]),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        ).returncode
    return code, [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_every_output_line_becomes_one_json_object_and_the_exit_code_is_kept(
    tmp_path: Path,
) -> None:
    script = (
        "import sys\n"
        'print(\'time="t" level=warning msg="storage is slow"\', flush=True)\n'
        "print('no structure here', file=sys.stderr, flush=True)\n"
        'print(\'{"level": "INFO", "message": "already json"}\', flush=True)\n'
        "sys.exit(3)\n"
    )
    code, records = relay_run(script, tmp_path)
    assert code == 3
    assert [(r["level"], r.get("logger"), r["message"]) for r in records] == [
        ("WARNING", "podman", "storage is slow"),
        ("INFO", "podman", "no structure here"),
        ("INFO", None, "already json"),  # passed through as it was, not wrapped again
        ("WARNING", "podman", f"{PY} exited with code 3"),
    ]
    wrapped = [r for r in records if r["message"] != "already json"]
    assert all({"timestamp", "level", "logger", "message"} <= r.keys() for r in wrapped)


def test_a_command_that_cannot_start_is_logged_not_raised(tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        code = subprocess.run(
            json_relay("registry", [str(tmp_path / "no-such-program")]),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        ).returncode
    [record] = [json.loads(line) for line in log.read_text().splitlines()]
    assert code == 127
    assert record["level"] == "ERROR" and "cannot start" in record["message"]


def test_stopping_the_group_keeps_the_commands_last_words(tmp_path: Path) -> None:
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    print('level=info msg=\"shutting down\"', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('level=info msg=\"ready\"', flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            json_relay("podman", [PY, "-c", script]),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    messages = [json.loads(line)["message"] for line in log.read_text().splitlines()]
    assert messages == ["ready", "shutting down"]
