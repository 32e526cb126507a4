"""Signed release approvals: the statement an approver signs; `ssh-keygen -Y` signs and verifies.

An approval is an SSH signature (git's SSH signing format) over one statement: which flow run,
which release candidate and its image digests, approve or reject, why, and when. Both sides build
the same bytes from the statement (sorted-key compact JSON), so `gantry approve` and a person
signing by hand with `ssh-keygen -Y sign` produce what the release flow verifies. Who approved is
the principal (an email) the policy's allowed-signers list gives the signing key: nobody names
themselves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAMESPACE = "gantry-release"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
SIGN_TIMEOUT = 120.0  # a passphrase prompt on the terminal may take a while
VERIFY_TIMEOUT = 30.0
MAX_SIGNATURE_CHARS = 16_000
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")

Decision = Literal["approve", "reject"]

_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = "-----END SSH SIGNATURE-----"


class ApprovalError(RuntimeError):
    """Signing or verifying could not be done at all: no ssh-keygen, no key, a timeout."""


class SignatureRefused(ValueError):
    """The signature does not make the statement an approval by an allowed signer."""


def utc_timestamp(when: datetime | None = None) -> str:
    """The statement's time format: UTC to the second, e.g. 2025-05-01T12:00:00Z."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime(TIME_FORMAT)


class ApprovalStatement(BaseModel):
    """What an approver signs. ``canonical()`` is the exact byte form that is signed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str = Field(description="the release's flow run id")
    candidate: str = Field(min_length=1, description="the release candidate's id")
    digests: list[str] = Field(description="the candidate's image digests (sha256:...)")
    decision: Decision
    reason: str = Field(default="", max_length=1000)
    time: str = Field(description="when it was signed, UTC: YYYY-MM-DDTHH:MM:SSZ")

    @field_validator("run")
    @classmethod
    def _run_is_a_uuid(cls, value: str) -> str:
        return str(uuid.UUID(value.strip()))

    @field_validator("digests")
    @classmethod
    def _digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if not _DIGEST_RE.match(digest):
                raise ValueError(f"not an image digest: {digest[:80]!r}")
        # Sorted and unique: the order images were listed in must not change the bytes signed.
        return sorted(set(value))

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        if not _TIME_RE.match(value):
            raise ValueError("time must be UTC to the second, like 2025-05-01T12:00:00Z")
        datetime.strptime(value, TIME_FORMAT)  # a real date, not 2025-13-45
        return value

    def canonical(self) -> bytes:
        """Sorted-key compact JSON, UTF-8, no trailing newline: the bytes that are signed."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")

    def signed_at(self) -> datetime:
        return datetime.strptime(self.time, TIME_FORMAT).replace(tzinfo=UTC)

    def skew(self, now: datetime | None = None) -> float:
        """Seconds between the statement's time and ``now`` (either direction)."""
        return abs(((now or datetime.now(UTC)) - self.signed_at()).total_seconds())


def default_key(home: Path | None = None) -> Path | None:
    """The user's usual SSH key: ~/.ssh/id_ed25519, else id_ecdsa, else id_rsa."""
    ssh = (home or Path.home()) / ".ssh"
    for name in DEFAULT_KEYS:
        if (ssh / name).is_file():
            return ssh / name
    return None


def _ssh_keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise ApprovalError("ssh-keygen is not installed (Debian package openssh-client)")
    return found


def _write_private(path: Path, data: bytes) -> None:
    """A file only its owner can read: statements and signatures never sit world-readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _run(
    argv: list[str], timeout: float, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            argv,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ApprovalError(
            f"ssh-keygen {argv[1]} {argv[2]} did not finish within {timeout:.0f} s"
        ) from exc
    except OSError as exc:
        raise ApprovalError(f"cannot run ssh-keygen: {exc.strerror}") from exc


def _stderr(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode("utf-8", "replace").strip()[:500]


def sign_statement(
    statement: ApprovalStatement,
    key: Path,
    namespace: str = NAMESPACE,
    timeout: float = SIGN_TIMEOUT,
) -> str:
    """The armored SSH signature of ``statement`` made with the private ``key``.

    ``key`` may also be a public key whose private half is in the ssh-agent; a passphrase is
    asked for on the terminal by ssh-keygen itself.
    """
    if not key.is_file():
        raise ApprovalError(f"no SSH key at {key}")
    tool = _ssh_keygen()
    with tempfile.TemporaryDirectory(prefix="gantry-sign-") as folder:  # mode 0700
        message = Path(folder) / "statement"
        _write_private(message, statement.canonical())
        # stdin is the terminal's: ssh-keygen may ask for the key's passphrase.
        try:
            result = subprocess.run(
                [tool, "-Y", "sign", "-n", namespace, "-f", str(key), str(message)],
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ApprovalError(
                f"ssh-keygen -Y sign did not finish within {timeout:.0f} s"
            ) from exc
        signature = message.with_name("statement.sig")
        if result.returncode != 0 or not signature.is_file():
            raise ApprovalError(f"ssh-keygen could not sign with {key}: {_stderr(result)}")
        return signature.read_text()


def check_armor(signature: str) -> str:
    """The signature text, trimmed, if it looks like one SSH signature; else SignatureRefused."""
    text = signature.strip()
    if not text:
        raise SignatureRefused("unsigned: the answer carries no signature")
    if len(text) > MAX_SIGNATURE_CHARS or not (
        text.startswith(_ARMOR_BEGIN) and text.endswith(_ARMOR_END)
    ):
        raise SignatureRefused("the signature is not an armored SSH signature")
    return text + "\n"


def verify_statement(
    statement: ApprovalStatement,
    signature: str,
    allowed_signers: Sequence[str],
    namespace: str = NAMESPACE,
    timeout: float = VERIFY_TIMEOUT,
) -> list[str]:
    """The principals (emails) on ``allowed_signers`` whose key signed ``statement``.

    Raises SignatureRefused when the key is not on the list or the signature does not match
    the statement and namespace; ApprovalError when ssh-keygen cannot be run.
    """
    armored = check_armor(signature)
    tool = _ssh_keygen()
    with tempfile.TemporaryDirectory(prefix="gantry-verify-") as folder:
        allowed = Path(folder) / "allowed_signers"
        sig = Path(folder) / "statement.sig"
        _write_private(allowed, ("\n".join(allowed_signers) + "\n").encode())
        _write_private(sig, armored.encode())
        found = _run([tool, "-Y", "find-principals", "-s", str(sig), "-f", str(allowed)], timeout)
        # One line per matching entry; an entry may name several principals, comma-separated.
        text = found.stdout.decode("utf-8", "replace")
        principals = [p.strip() for p in text.replace(",", "\n").splitlines() if p.strip()]
        if found.returncode != 0 or not principals:
            raise SignatureRefused("signed by a key that is not on the allowed signers list")
        verified = []
        for principal in principals:
            result = _run(
                [
                    tool,
                    "-Y",
                    "verify",
                    "-f",
                    str(allowed),
                    "-I",
                    principal,
                    "-n",
                    namespace,
                    "-s",
                    str(sig),
                ],
                timeout,
                stdin=statement.canonical(),
            )
            if result.returncode == 0:
                verified.append(principal)
        if not verified:
            raise SignatureRefused(
                f"the signature does not match this statement (or not the {namespace!r} namespace)"
            )
        return verified


def generate_key(path: Path, comment: str, timeout: float = VERIFY_TIMEOUT) -> Path:
    """A new passphrase-less ed25519 key at ``path`` (0600) unless one is there; its .pub path."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [_ssh_keygen(), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
        result = _run(argv, timeout)
        if result.returncode != 0:
            raise ApprovalError(f"ssh-keygen could not make a key at {path}: {_stderr(result)}")
    path.chmod(0o600)
    return path.with_name(path.name + ".pub")


def allowed_signer_line(principal: str, public_key: Path) -> str:
    """``principal keytype key``: the allowed-signers line for ``public_key``'s holder."""
    keytype, key, *_ = public_key.read_text().split()
    return f"{principal} {keytype} {key}"
