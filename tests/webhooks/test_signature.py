"""X-Hub-Signature-256: GitHub's documented vector, and every way a header can be wrong."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from webhooks.signature import SignatureError, sign, verify

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_signing_matches_githubs_documented_vector() -> None:
    assert sign(GITHUB_SECRET, GITHUB_BODY) == GITHUB_SIGNATURE


def test_githubs_documented_signature_verifies() -> None:
    verify(GITHUB_SIGNATURE, GITHUB_BODY, [SecretStr(GITHUB_SECRET)])


def test_upper_case_hex_is_the_same_signature() -> None:
    upper = "sha256=" + GITHUB_SIGNATURE.removeprefix("sha256=").upper()
    verify(upper, GITHUB_BODY, [SecretStr(GITHUB_SECRET)])


def test_either_the_current_or_the_previous_secret_is_accepted() -> None:
    secrets = [SecretStr("new-secret-0123456789"), SecretStr(GITHUB_SECRET)]
    verify(GITHUB_SIGNATURE, GITHUB_BODY, secrets)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("sha1=" + "0" * 40, "malformed"),
        (GITHUB_SIGNATURE.removeprefix("sha256="), "malformed"),
        (GITHUB_SIGNATURE[:-1], "malformed"),
        (GITHUB_SIGNATURE + "0", "malformed"),
        ("sha256=" + "z" * 64, "malformed"),
        (" " + GITHUB_SIGNATURE, "malformed"),
        (GITHUB_SIGNATURE + "\n", "malformed"),
        ("SHA256=" + GITHUB_SIGNATURE.removeprefix("sha256="), "malformed"),
        ("sha256=" + "0" * 64, "mismatch"),
    ],
)
def test_bad_signature_headers_are_refused_with_their_reason(
    header: str | None, reason: str
) -> None:
    with pytest.raises(SignatureError) as caught:
        verify(header, GITHUB_BODY, [SecretStr(GITHUB_SECRET)])
    assert caught.value.reason == reason
    assert GITHUB_SIGNATURE.removeprefix("sha256=") not in str(caught.value)


def test_a_signature_by_another_secret_is_refused() -> None:
    with pytest.raises(SignatureError, match="mismatch"):
        verify(
            sign("another-secret-0123456789", GITHUB_BODY), GITHUB_BODY, [SecretStr(GITHUB_SECRET)]
        )


def test_a_changed_body_no_longer_verifies() -> None:
    with pytest.raises(SignatureError, match="mismatch"):
        verify(GITHUB_SIGNATURE, GITHUB_BODY + b" ", [SecretStr(GITHUB_SECRET)])
