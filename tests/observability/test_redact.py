"""Secrets never survive into text or log records: registered values and credential shapes."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, SecretStr

from core.redact import (
    MASK,
    RedactingFilter,
    forget_secrets,
    redact,
    register_model_secrets,
    register_secret,
)

DD_KEY = "0123456789abcdef0123456789abcdef"
ROUTING_KEY = "R0123456789ABCDEF0123456789ABCDE"
GH_TOKENS = [
    "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "gho_" + "16C7e42F292c6912E7710c838347Ae178B4a",
    "ghs_" + "abcdefghijklmnopqrstuvwxyz0123456789",
    "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
]
SIGNATURE = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig", "eyJhbGciOiJSUzI1NiJ9"),
        ("authorization: token abcdef1234567890", "abcdef1234567890"),
        ("headers={'Authorization': 'Bearer s3cr3t-value-xyz'}", "s3cr3t-value-xyz"),
        ("X-Hub-Signature-256: sha256=" + SIGNATURE, SIGNATURE),
        ("X-Hub-Signature-256: sha256=not-hex-but-still-secret", "not-hex-but-still-secret"),
        ("computed sha256=" + SIGNATURE + " did not match", SIGNATURE),
        ("GET https://example.test/hook?token=abc123secret&page=2", "abc123secret"),
        ("GET /api?access_token=qwerty987654 HTTP/1.1", "qwerty987654"),
        ('{"routing_key": "' + ROUTING_KEY + '", "event_action": "trigger"}', ROUTING_KEY),
        ("DD-API-KEY: " + DD_KEY, DD_KEY),
        ("clone https://x-access-token:pa55word-xyz@github.com/acme/api.git", "pa55word-xyz"),
        ("GANTRY_WEBHOOK_SECRET=topsecretvalue", "topsecretvalue"),
        ("password: hunter2hunter2", "hunter2hunter2"),
    ],
)
def test_credential_shapes_are_masked_without_registration(text: str, secret: str) -> None:
    result = redact(text)
    assert secret not in result
    assert MASK in result


@pytest.mark.parametrize("token", GH_TOKENS)
def test_github_tokens_are_masked_anywhere_in_text(token: str) -> None:
    result = redact(f"remote rejected {token}: bad credentials")
    assert token not in result
    assert result == f"remote rejected {MASK}: bad credentials"


def test_masking_keeps_the_scheme_and_key_visible() -> None:
    assert redact("Authorization: Bearer abcdefgh12345") == f"Authorization: Bearer {MASK}"
    assert redact("X-Hub-Signature-256: sha256=" + SIGNATURE) == (
        f"X-Hub-Signature-256: sha256={MASK}"
    )


def test_ordinary_text_and_commit_shas_stay_readable() -> None:
    text = (
        "deployed acme/api at 3f786850e387550fdab836ed7e6dc881de23001b to production; "
        "the token expired, retrying in 2s (tokens: 5)"
    )
    assert redact(text) == text


def test_redacting_twice_changes_nothing_more() -> None:
    once = redact("token=abc123secret Authorization: Bearer abcdefgh12345 " + GH_TOKENS[0])
    assert redact(once) == once
    assert "]]" not in once


def test_registered_secret_is_masked_with_its_encoded_forms() -> None:
    value = "s3cr3t value/with+chars"
    register_secret(SecretStr(value))
    text = f"plain={value} url=s3cr3t%20value%2Fwith%2Bchars form=s3cr3t+value%2Fwith%2Bchars"
    result = redact(text)
    assert "s3cr3t" not in result
    assert result.count(MASK) == 3


def test_registered_dd_api_key_is_masked_in_free_text() -> None:
    register_secret(DD_KEY)
    assert redact(f"the key {DD_KEY} was refused") == f"the key {MASK} was refused"


def test_short_and_empty_secrets_are_ignored_so_logs_stay_readable() -> None:
    register_secret("abc")
    register_secret("")
    register_secret(None)
    assert redact("abc abc") == "abc abc"


def test_forgetting_secrets_unregisters_them() -> None:
    register_secret("forget-me-please")
    forget_secrets()
    assert redact("forget-me-please") == "forget-me-please"


def test_model_secrets_are_registered_including_nested_models() -> None:
    class Inner(BaseModel):
        key: SecretStr

    class Outer(BaseModel):
        name: str
        token: SecretStr
        inner: Inner

    register_model_secrets(
        Outer(
            name="visible-name",
            token=SecretStr("outer-secret-1"),
            inner=Inner(key=SecretStr("inner-secret-2")),
        )
    )
    assert redact("visible-name outer-secret-1 inner-secret-2") == f"visible-name {MASK} {MASK}"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tests.observability.redact")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_filter_masks_secrets_passed_as_log_arguments(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    register_secret(ROUTING_KEY)
    logger.info("sending %s with %r", {"routing_key": ROUTING_KEY}, GH_TOKENS[1])
    output = stream.getvalue()
    assert ROUTING_KEY not in output
    assert GH_TOKENS[1] not in output
    assert output.startswith("INFO sending")


def test_filter_masks_secrets_in_exception_tracebacks_and_causes(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    register_secret(DD_KEY)
    try:
        try:
            raise ConnectionError(f"https://hooks.test/?token=querysecret1 key {DD_KEY}")
        except ConnectionError as exc:
            raise RuntimeError(f"push failed with {GH_TOKENS[0]}") from exc
    except RuntimeError:
        logger.exception("step failed")
    output = stream.getvalue()
    assert "Traceback (most recent call last)" in output
    assert "ConnectionError" in output and "RuntimeError" in output
    for secret in (DD_KEY, "querysecret1", GH_TOKENS[0]):
        assert secret not in output


def test_filter_leaves_no_raw_exception_for_a_later_formatter() -> None:
    register_secret("late-formatter-secret")
    try:
        raise ValueError("late-formatter-secret")
    except ValueError as exc:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", None, (type(exc), exc, exc.__traceback__)
        )
    assert RedactingFilter().filter(record)
    assert record.exc_info is None
    formatted = logging.Formatter().format(record)
    assert "late-formatter-secret" not in formatted
    assert "ValueError" in formatted


def test_filter_survives_a_broken_format_string(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.info("two %s %s but one", "token=brokenfmtsecret")
    output = stream.getvalue()
    assert "brokenfmtsecret" not in output
    assert "two" in output


# A kill switch, not a measure: linear redaction of 400,000 characters takes well under a
# second, a quadratic one (backtracking over the chain) hours, so only a regression trips it.
@pytest.mark.timeout(60)
def test_long_identifier_chains_are_redacted_in_linear_time() -> None:
    text = "a_" * 200_000 + " ci_token=chainsecret1"
    result = redact(text)
    assert "chainsecret1" not in result
