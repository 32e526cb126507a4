"""Secrets a process receives only through its environment are masked from its first log line."""

from __future__ import annotations

import logging

import pytest

from core.redact import MASK, RedactingFilter, forget_secrets


def test_a_flow_run_process_masks_the_credentials_its_environment_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forget_secrets()
    credential = "gantry:Zq8rT1vYkP0wLs3"
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", credential)
    # The filter of a newly configured process (logging.yml builds one per handler).
    redacting = RedactingFilter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "api login %s", (credential,), None)
    assert redacting.filter(record)
    assert credential not in record.getMessage()
    assert MASK in record.getMessage()
    forget_secrets()
