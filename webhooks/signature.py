"""GitHub's ``X-Hub-Signature-256``: HMAC-SHA256 of the raw body, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Literal

from pydantic import SecretStr

HEADER = "X-Hub-Signature-256"
PREFIX = "sha256="
_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")

Reason = Literal["missing", "malformed", "mismatch"]


class SignatureError(Exception):
    """The delivery is not signed with an accepted secret. Never carries the header's value."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"signature {reason}")
        self.reason: Reason = reason


def sign(secret: str | bytes, body: bytes) -> str:
    """The header value GitHub sends for ``body`` signed with ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def check_format(header: str | None) -> str:
    """The header if it is ``sha256=`` and 64 hex digits; otherwise SignatureError.

    Checked before the body is read, so an unsigned request costs nothing.
    """
    if header is None or not header:
        raise SignatureError("missing")
    if _SIGNATURE.fullmatch(header) is None:
        raise SignatureError("malformed")
    return header


def verify(header: str | None, body: bytes, secrets: Sequence[SecretStr]) -> None:
    """Raise SignatureError unless ``header`` is a valid signature of ``body`` by a secret."""
    given = check_format(header).lower().encode()
    matched = False
    # Every secret is compared, so timing does not reveal which one (if any) matched.
    for secret in secrets:
        expected = sign(secret.get_secret_value(), body).encode()
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError("mismatch")
