"""Secrets out of text and log records: registered secret values and credential-shaped strings.

Every secret Gantry loads (block fields, environment variables) is registered here, and every
log handler carries ``RedactingFilter``, so a secret that reaches a log line, an exception
message or a traceback is masked before any handler formats it. Text written anywhere else a
person reads (run reports, GitHub) goes through ``redact`` too. Known shapes (bearer headers,
webhook signatures, GitHub tokens, PEM private keys, credential query parameters and key/value
pairs) are masked whether or not they were registered.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, Secret, SecretBytes, SecretStr

MASK = "[redacted]"

# Secrets Gantry's processes receive through their environment.
ENVIRONMENT_SECRETS = (
    "PREFECT_API_AUTH_STRING",
    "GANTRY_PREFECT_AUTH_STRING",
    "GANTRY_WEBHOOK_SECRET",
    "GANTRY_GITHUB_TOKEN",
    "SNYK_TOKEN",
    "DD_API_KEY",
    "DD_APP_KEY",
    "GANTRY_PAGERDUTY_ROUTING_KEY",
)

# Shorter values would mask ordinary words and digits all over the logs.
MIN_SECRET_LENGTH = 6

_KEY_NAMES = (
    r"authorization|proxy-authorization|x-hub-signature(?:-256)?|dd-api-key|dd-application-key"
    r"|x-api-key|api[_-]?key|app[_-]?key|routing[_-]?key|integration[_-]?key|private[_-]?key"
    r"|(?:[a-z0-9]+[_-]){0,3}token|[a-z0-9]+[_-]secret|secret[_-]key|password|passwd"
)
# A credential named by its key: header lines, query parameters, JSON, dict reprs, env dumps.
# The scheme (Bearer, token, sha256=) stays visible; only the value is masked.
_KEY_VALUE = re.compile(
    r"(?P<key>(?<![A-Za-z0-9])(?:" + _KEY_NAMES + r"))(?![A-Za-z0-9_-])"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    # Possessive: an already masked "Bearer [redacted]" must not re-match with "Bearer" as value.
    r"(?P<scheme>(?:bearer|token|basic)\s+|sha256=|sha1=)?+"
    r"(?P<value>[^\s\"',;&}\])\[]+)",  # never "[redacted]" again
    re.IGNORECASE,
)
_SHAPES = re.compile(
    r"gh[pousr]_[A-Za-z0-9_]{8,}"  # GitHub classic, OAuth, user/server-to-server, refresh
    r"|github_pat_[A-Za-z0-9_]{8,}"  # GitHub fine-grained
    r"|(?<=sha256=)[0-9a-fA-F]{64}"  # webhook HMAC signatures
    r"|(?<=sha1=)[0-9a-fA-F]{40}"
    r"|(?i:(?<=bearer )|(?<=bearer\t))[A-Za-z0-9._~+/=-]{8,}"  # bearer values without a key
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",  # user:password in URLs
)

# A PEM private key block, whatever its type (RSA, EC, OPENSSH, ENCRYPTED): from its BEGIN line
# to its END line, or to the end of the text when the END was cut off; and the tail of one whose
# BEGIN was cut off (base64 lines up to the END line), as a last lines excerpt would show it.
_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*)PRIVATE KEY-----"
    r"(?:.*?-----END (?P=kind)PRIVATE KEY-----|.*\Z)"
    r"|(?:^[ \t]*[A-Za-z0-9+/=]{16,}[ \t]*\r?\n)+[ \t]*-----END [A-Z0-9 ]*PRIVATE KEY-----",
    re.DOTALL | re.MULTILINE,
)
_PEM_MASK = "[redacted private key]"
_PEM_HEADER = re.compile(r"^-----(?:BEGIN|END) [A-Z0-9 ]+-----$")
# Keys of plain mappings (a kubeconfig inside a block) whose values are credentials: tokens,
# passwords, secrets, keys and the base64 key/certificate data fields.
_SECRET_KEY = re.compile(
    r"token|password|passwd|secret|private[_-]?key|api[_-]?key|client[_-]?key|-data$",
    re.IGNORECASE,
)

_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None


def _variants(value: str) -> set[str]:
    # A secret may reach a log URL-encoded (query strings) or JSON-escaped (request bodies).
    variants = {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    return {v for v in variants if len(v) >= MIN_SECRET_LENGTH}


def _pem_lines(value: str) -> set[str]:
    """Each line of a PEM block but its BEGIN/END headers: one line alone must not leak either."""
    if "-----BEGIN " not in value:
        return set()
    lines = {line.strip() for line in value.replace("\\n", "\n").splitlines()}
    return {line for line in lines if line and not _PEM_HEADER.match(line)}


def register_secret(value: str | SecretStr | None) -> None:
    """Mask ``value`` wherever it appears from now on. Empty and very short values are ignored.

    A PEM block is registered whole and line by line, so an excerpt cut from it is masked too.
    """
    global _secret_pattern
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value or len(value.strip()) < MIN_SECRET_LENGTH:
        return
    with _lock:
        new = _variants(value.strip()) | _variants(value)
        for line in _pem_lines(value):
            new |= _variants(line)
        if new <= _secrets:
            return
        _secrets.update(new)
        # Longest first, so a secret containing another is masked whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def register_secrets(values: Iterable[str | SecretStr | None]) -> None:
    for value in values:
        register_secret(value)


def _register_all(value: Any) -> None:
    """Every string inside a value that is secret as a whole (a ``SecretDict``'s content)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        register_secret(value)
    elif isinstance(value, dict):
        for item in value.values():
            _register_all(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _register_all(item)


def _register_found(value: Any, key: str = "") -> None:
    """Secret types anywhere in ``value``; in plain mappings, values under credential keys."""
    if isinstance(value, SecretStr | SecretBytes | Secret):
        _register_all(value.get_secret_value())
    elif isinstance(value, BaseModel):
        register_model_secrets(value)
    elif isinstance(value, dict):
        for name, item in value.items():
            _register_found(item, str(name))
    elif isinstance(value, list | tuple):
        for item in value:
            _register_found(item, key)
    elif isinstance(value, str) and key and _SECRET_KEY.search(key):
        register_secret(value)


def register_model_secrets(model: BaseModel) -> None:
    """Register every secret of ``model`` (a Prefect block, a settings object): its
    ``SecretStr``/``SecretBytes``/``SecretDict`` fields, nested models', and credential-named
    entries of plain mappings (a kubeconfig's tokens, passwords and key/certificate data)."""
    for name in type(model).model_fields:
        _register_found(getattr(model, name, None), name)


def forget_secrets() -> None:
    """Drop every registered secret (tests reset global state with this)."""
    global _secret_pattern
    with _lock:
        _secrets.clear()
        _secret_pattern = None


def _mask_key_value(match: re.Match[str]) -> str:
    return f"{match['key']}{match['sep']}{match['scheme'] or ''}{MASK}"


def redact(text: str) -> str:
    """``text`` with registered secrets and credential-shaped strings masked."""
    # PEM blocks first: masked whole, before registered lines would leave a mask per line.
    # Looked for only when a key's header is there: most text has none, and the cut-off form
    # would otherwise rescan every run of long base64-looking lines.
    if "PRIVATE KEY-----" in text:
        text = _PEM_PRIVATE_KEY.sub(_PEM_MASK, text)
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _KEY_VALUE.sub(_mask_key_value, text)
    return _SHAPES.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """Strings redacted; containers of strings redacted inside; anything else unchanged."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


_DONE = "_gantry_redacted"


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, arguments, exception and stack text, in place.

    The message is rendered once and its arguments dropped, because an argument's ``str`` may
    hold a secret that only appears after formatting. The exception is rendered to redacted
    ``exc_text`` and ``exc_info`` cleared, so no later formatter can render the raw traceback.
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        # A flow-run process holds the stack's credentials only in its environment (the worker
        # passes them on): every process that logs through this filter masks them from the start.
        register_secrets(os.environ.get(variable) for variable in ENVIRONMENT_SECRETS)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE, False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be shown, masked
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            if not record.exc_text:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, _DONE, True)
        return True
