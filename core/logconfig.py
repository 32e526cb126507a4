"""JSON logs, one object per line, with secrets masked and run context attached.

Prefect processes (server, worker, flow runs) read ``core/logging.yml`` when started with
``logging_env()``; other processes (the webhook receiver, CLI background services) call
``configure_json_logging()``. Both format with python-json-logger, set up for Gantry's fields.
``bind(...)`` adds fields such as ``delivery_id`` to every record logged inside it, in this
thread or task and the ones it starts with a copied context.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date
from datetime import time as dt_time
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import pythonjsonlogger.json
from pythonjsonlogger.core import RESERVED_ATTRS

from core.redact import RedactingFilter, redact_value

LOGGING_CONFIG_PATH = Path(__file__).with_name("logging.yml")

# Context fields every line carries when known, in this order after the basics.
CONTEXT_FIELDS = (
    "flow_run_id",
    "flow_run_name",
    "flow_name",
    "task_run_id",
    "task_run_name",
    "pipeline",
    "stage",
    "repository",
    "sha",
    "delivery_id",
)

_bound: ContextVar[Mapping[str, object]] = ContextVar(
    "gantry_log_fields", default=MappingProxyType({})
)

# Prefect's own bookkeeping on records, not worth a field on every line.
_SKIPPED_EXTRAS = ("send_to_api", "worker_id")
# python-json-logger's names for the record's fields -> the names our lines have always used.
_RENAMED = MappingProxyType(
    {
        "asctime": "timestamp",
        "levelname": "level",
        "name": "logger",
        "exc_info": "exception",
        "stack_info": "stack",
    }
)
# Field order of a line: what a reader scans for first, the traceback last.
_LEADING = ("timestamp", "level", "logger", "message", *CONTEXT_FIELDS)
_TRAILING = ("exception", "stack")


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add ``fields`` to every record logged inside the ``with`` block (None values unset)."""
    merged = {**_bound.get(), **fields}
    token = _bound.set({k: v for k, v in merged.items() if v is not None})
    try:
        yield
    finally:
        _bound.reset(token)


def bound_fields() -> dict[str, object]:
    """The fields ``bind`` currently adds."""
    return dict(_bound.get())


def _prefect_run_fields() -> dict[str, object]:
    # Only when Prefect is already loaded: a receiver that never imports it must not pay for it.
    context = sys.modules.get("prefect.context")
    if context is None:
        return {}
    fields: dict[str, object] = {}
    try:
        flow_ctx = context.FlowRunContext.get()
        if flow_ctx is not None and flow_ctx.flow_run is not None:
            fields["flow_run_id"] = str(flow_ctx.flow_run.id)
            fields["flow_run_name"] = flow_ctx.flow_run.name
            fields["flow_name"] = flow_ctx.flow.name
        task_ctx = context.TaskRunContext.get()
        if task_ctx is not None:
            fields["task_run_id"] = str(task_ctx.task_run.id)
            fields["task_run_name"] = task_ctx.task_run.name
            fields.setdefault("flow_run_id", str(task_ctx.task_run.flow_run_id))
    except Exception:  # a half-built context must never break logging
        return fields
    return fields


class ContextFilter(logging.Filter):
    """Copies bound fields and the Prefect run context onto records that lack them.

    Runs when the record is handled, in the thread that logged it, where the context is right.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**_prefect_run_fields(), **_bound.get()}.items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def _jsonable(value: object) -> object:
    # Objects become their ``str`` here, before redaction: left to the JSON encoder, a secret
    # inside an object's text would only appear after the masking.
    if value is None or isinstance(value, bool | int | float | str | date | dt_time):
        return value  # python-json-logger writes dates and times as ISO 8601
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """python-json-logger's formatter with Gantry's field names, run context and redaction.

    One object per record: ``timestamp`` (UTC, milliseconds), ``level``, ``logger``, ``message``,
    the context fields that are known, any ``extra=`` fields, then ``exception`` and ``stack``.
    Every string is redacted again here so the formatter is safe even on a handler that lacks
    ``RedactingFilter``.
    """

    # ``formatTime`` without a ``datefmt``: ISO 8601 in UTC with milliseconds and a "Z".
    converter = staticmethod(time.gmtime)
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"

    def __init__(self, **options: Any) -> None:
        # The fields are Gantry's contract (docs/observability.md); a logging config may still
        # set other python-json-logger options (json_indent, prefix, ...).
        defaults: dict[str, Any] = {
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": dict(_RENAMED),
            "reserved_attrs": [*RESERVED_ATTRS, "taskName", *_SKIPPED_EXTRAS],
            "json_ensure_ascii": False,
        }
        super().__init__(**{**defaults, **options})

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # Bound fields and the Prefect run context, for records that did not pass ContextFilter.
        for key, value in {**_prefect_run_fields(), **_bound.get()}.items():
            if log_data.get(key) is None:
                log_data[key] = value

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        leading = {key: log_data.pop(key) for key in _LEADING if key in log_data}
        trailing = {key: log_data.pop(key) for key in _TRAILING if key in log_data}
        return {
            key: redact_value(_jsonable(value))
            for key, value in {**leading, **log_data, **trailing}.items()
            if value is not None or key not in CONTEXT_FIELDS
        }


def logging_env() -> dict[str, str]:
    """Environment variables that make a Prefect process log with ``logging.yml``."""
    return {
        "PREFECT_LOGGING_SETTINGS_PATH": str(LOGGING_CONFIG_PATH),
        # Gantry's own loggers also feed the API handler; outside a run there is nothing
        # to attach a line to, which is normal, not a warning per line.
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }


def configure_json_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stderr) for a process that does not run flows.

    Replaces the root handlers; uvicorn's loggers propagate to root (start uvicorn with
    ``log_config=None`` so it keeps this). Handlers other libraries attached elsewhere get
    the redaction filter too.
    """
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "redact": {"()": RedactingFilter},
            "context": {"()": ContextFilter},
        },
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["context", "redact"],
                "stream": stream if stream is not None else sys.stderr,
            }
        },
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
        "root": {"level": level, "handlers": ["json"]},
    }
    logging.config.dictConfig(config)
    for handler in _all_handlers():
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def _all_handlers() -> list[logging.Handler]:
    handlers = list(logging.getLogger().handlers)
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    return handlers
