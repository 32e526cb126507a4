"""JSON log lines: fields, bound context, redaction; the Prefect logging config in a process."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from contextvars import copy_context
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.logconfig import (
    LOGGING_CONFIG_PATH,
    JsonFormatter,
    bind,
    bound_fields,
    configure_json_logging,
    logging_env,
)
from core.redact import register_secret

SECRET = "0123456789abcdef0123456789abcdef"


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("gantry.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_a_record_is_one_json_line_with_the_basic_fields() -> None:
    line = JsonFormatter().format(_record("deployed %s\nto staging", "acme/api"))
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "INFO"
    assert data["logger"] == "gantry.test"
    assert data["message"] == "deployed acme/api\nto staging"
    assert data["timestamp"].endswith("Z") and "T" in data["timestamp"]


def test_known_context_fields_and_extras_are_fields_of_the_line() -> None:
    record = _record(
        "stage done",
        pipeline="merge",
        stage="unit",
        repository="acme/api",
        sha="3f786850e387550fdab836ed7e6dc881de23001b",
        flow_run_id="6a8a3d0e-0000-4000-8000-000000000001",
        attempt=2,
    )
    data = json.loads(JsonFormatter().format(record))
    assert data["pipeline"] == "merge"
    assert data["stage"] == "unit"
    assert data["repository"] == "acme/api"
    assert data["sha"] == "3f786850e387550fdab836ed7e6dc881de23001b"
    assert data["flow_run_id"] == "6a8a3d0e-0000-4000-8000-000000000001"
    assert data["attempt"] == 2


def test_bound_fields_reach_records_inside_the_block_only() -> None:
    formatter = JsonFormatter()
    with bind(delivery_id="d-1", repository="acme/api"):
        with bind(pipeline="pr", repository="acme/web"):
            inner = json.loads(formatter.format(_record("inner")))
        outer = json.loads(formatter.format(_record("outer")))
    after = json.loads(formatter.format(_record("after")))
    assert inner["delivery_id"] == "d-1"
    assert inner["repository"] == "acme/web"
    assert inner["pipeline"] == "pr"
    assert outer["repository"] == "acme/api"
    assert "pipeline" not in outer
    assert "delivery_id" not in after
    assert bound_fields() == {}


def test_bound_fields_follow_a_copied_context_into_a_thread() -> None:
    seen: list[dict[str, object]] = []
    with bind(delivery_id="d-7"):
        context = copy_context()
    thread = threading.Thread(target=lambda: context.run(lambda: seen.append(bound_fields())))
    thread.start()
    thread.join(5)
    assert seen == [{"delivery_id": "d-7"}]


def test_the_formatter_redacts_message_fields_and_exceptions_on_its_own() -> None:
    register_secret(SECRET)
    try:
        raise RuntimeError(f"refused key {SECRET}")
    except RuntimeError as exc:
        record = _record("sending %s", SECRET, note=f"key={SECRET}")
        record.exc_info = (type(exc), exc, exc.__traceback__)
    line = JsonFormatter().format(record)
    assert SECRET not in line
    data = json.loads(line)
    assert "RuntimeError" in data["exception"]


def test_configure_json_logging_writes_redacted_json_lines_for_every_logger() -> None:
    stream = io.StringIO()
    configure_json_logging("INFO", stream=stream)
    register_secret(SECRET)
    with bind(delivery_id="abc-123"):
        logging.getLogger("webhooks.receiver").info("delivery with key %s", SECRET)
        logging.getLogger("uvicorn.error").warning("Authorization: Bearer abcdefgh123456")
    logging.getLogger("webhooks.receiver").debug("below the level")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["webhooks.receiver", "uvicorn.error"]
    assert all(line["delivery_id"] == "abc-123" for line in lines)
    assert SECRET not in stream.getvalue()
    assert "abcdefgh123456" not in stream.getvalue()


_PROBE = r"""
import json, logging, sys, uuid
import prefect.main  # configures logging the way every Prefect process does
from prefect.logging.handlers import APILogHandler, set_api_log_sink
from core.redact import RedactingFilter, register_secret
from core.logconfig import JsonFormatter, bind

sent = []
set_api_log_sink(sent.append)
secret = sys.argv[1]
register_secret(secret)
run_id = str(uuid.uuid4())
with bind(pipeline="merge", repository="acme/api"):
    logging.getLogger("prefect.flow_runs").info(
        "pushing with %s", secret, extra={"flow_run_id": run_id})
    logging.getLogger("gantry.steps.unit").warning("outside a run: token=%s", secret)
    try:
        raise RuntimeError("failed with " + secret)
    except RuntimeError:
        logging.getLogger("gantry.steps.unit").exception("step crashed")

handlers = set()
for logger in [logging.getLogger()] + [
    l for l in logging.root.manager.loggerDict.values() if isinstance(l, logging.Logger)
]:
    handlers.update(logger.handlers)
report = {
    "sent": sent,
    "run_id": run_id,
    "all_redacting": all(
        any(isinstance(f, RedactingFilter) for f in h.filters) for h in handlers),
    "stream_formatters": sorted({
        type(h.formatter).__name__ for h in handlers if isinstance(h, logging.StreamHandler)}),
    "api_handler_on_flow_runs": any(
        isinstance(h, APILogHandler) for h in logging.getLogger("prefect.flow_runs").handlers),
}
print(json.dumps(report))
"""


@pytest.fixture
def prefect_process_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.update(logging_env())
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    return env


def test_prefect_processes_log_json_lines_and_send_redacted_lines_to_the_api(
    prefect_process_env: dict[str, str], tmp_path: Path
) -> None:
    assert LOGGING_CONFIG_PATH.is_file()
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, SECRET],
        env=prefect_process_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["all_redacting"]
    assert report["stream_formatters"] == ["JsonFormatter"]
    assert report["api_handler_on_flow_runs"]

    # The Prefect UI gets the line of the run, masked, attached to the run.
    assert [log["message"] for log in report["sent"]] == ["pushing with [redacted]"]
    assert report["sent"][0]["flow_run_id"] == report["run_id"]

    # Every stderr line is a JSON object; none holds the secret.
    assert SECRET not in result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    by_message = {line["message"]: line for line in lines}
    assert by_message["pushing with [redacted]"]["flow_run_id"] == report["run_id"]
    assert by_message["outside a run: token=[redacted]"]["pipeline"] == "merge"
    crashed = by_message["step crashed"]
    assert crashed["repository"] == "acme/api"
    assert "RuntimeError: failed with [redacted]" in crashed["exception"]


def _logging_config(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict)
    return config


def test_the_prefect_logging_config_differs_from_prefects_own_only_where_gantry_changes_it() -> (
    None
):
    # Prefect reads our file instead of its own, never both: a logger or handler that a Prefect
    # upgrade adds to its logging.yml must be added to core/logging.yml too.
    from prefect.logging.configuration import DEFAULT_LOGGING_SETTINGS_PATH

    prefects = _logging_config(DEFAULT_LOGGING_SETTINGS_PATH)
    ours = _logging_config(LOGGING_CONFIG_PATH)
    upgrade_hint = (
        f"Prefect's {DEFAULT_LOGGING_SETTINGS_PATH} changed: bring core/logging.yml in line"
    )

    assert {k: v for k, v in ours["loggers"].items() if k != "gantry"} == prefects["loggers"], (
        upgrade_hint
    )
    assert ours["root"] == prefects["root"], upgrade_hint
    assert ours["handlers"].keys() == prefects["handlers"].keys(), upgrade_hint
    for name, handler in prefects["handlers"].items():
        assert ours["handlers"][name]["level"] == handler["level"], upgrade_hint
        if "formatter" not in handler:
            # The API handlers: Prefect's own classes, with the filters added.
            assert ours["handlers"][name]["class"] == handler["class"], upgrade_hint
    for name, handler in ours["handlers"].items():
        assert handler["filters"] == ["context", "redact"], name
        assert handler.get("formatter", "json") == "json", name
