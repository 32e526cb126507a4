"""JSON logs, one object per line, with secrets masked and run context attached.

Prefect processes (server, worker, flow runs) read ``deployments/logging.yml`` when started with
``logging_env()``; other processes (the webhook receiver, CLI background services) call
``configure_json_logging()``. ``bind(...)`` adds fields such as ``delivery_id`` to every record
logged inside it, in this thread or task and the ones it starts with a copied context.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from core.redact import RedactingFilter, redact, redact_value

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

# Attributes every LogRecord has; anything else on a record came from ``extra=`` or a filter.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# Prefect's own bookkeeping on records, not worth a field on every line.
_SKIPPED_EXTRAS = frozenset({"send_to_api", "worker_id"})


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
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, context, extras.

    Prefect's own JSON formatter dumps the raw record (unformatted ``msg`` and ``args``); ours
    writes the rendered, redacted message and the named context fields. Strings are redacted
    again here so the formatter is safe even on a handler that lacks ``RedactingFilter``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # dictConfig passes fmt/datefmt/style; a JSON line has no use for them.
        super().__init__()

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, object] = {
            "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        known = {**_prefect_run_fields(), **_bound.get()}
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is None:
                value = known.get(key)
            if value is not None:
                line[key] = redact_value(_jsonable(value))
        for key, value in vars(record).items():
            if key in line or key in _STANDARD_ATTRS or key in _SKIPPED_EXTRAS:
                continue
            if key.startswith("_"):
                continue
            line[key] = redact_value(_jsonable(value))
        for key, value in known.items():
            line.setdefault(key, redact_value(_jsonable(value)))
        exc_text = record.exc_text
        if record.exc_info and record.exc_info[0] is not None and not exc_text:
            exc_text = self.formatException(record.exc_info)
        if exc_text:
            line["exception"] = redact(exc_text)
        if record.stack_info:
            line["stack"] = redact(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


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
