"""PEM private keys are masked by their shape, registered or not, whole or cut."""

from __future__ import annotations

import json

import pytest

from core.redact import redact

BODY = [
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu",
    "NMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ",
]


def pem(kind: str = "", body: list[str] = BODY) -> str:
    return "\n".join(
        [f"-----BEGIN {kind}PRIVATE KEY-----", *body, f"-----END {kind}PRIVATE KEY-----"]
    )


@pytest.mark.parametrize("kind", ["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "])
def test_a_whole_private_key_is_masked_and_the_text_around_it_kept(kind: str) -> None:
    text = f"before\n{pem(kind)}\nafter"

    masked = redact(text)

    assert masked.startswith("before\n")
    assert masked.endswith("\nafter")
    assert not any(line in masked for line in BODY)
    assert "PRIVATE KEY-----" not in masked


def test_a_key_cut_before_its_end_is_masked_to_the_end_of_the_text() -> None:
    text = "tail of a log\n" + pem().rsplit("\n", 2)[0]

    assert redact(text) == "tail of a log\n[redacted private key]"


def test_a_key_whose_beginning_was_cut_off_is_masked_up_to_its_end_line() -> None:
    text = "\n".join(["last lines:", *BODY[1:], "-----END RSA PRIVATE KEY-----", "exit 1"])

    masked = redact(text)

    assert masked.startswith("last lines:\n")
    assert masked.endswith("\nexit 1")
    assert not any(line in masked for line in BODY)


def test_a_json_escaped_key_is_masked_too() -> None:
    masked = redact(json.dumps({"private_key": pem()}))

    assert not any(line in masked for line in BODY)


def test_a_public_key_or_certificate_is_left_alone() -> None:
    certificate = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----"

    assert redact(certificate) == certificate
