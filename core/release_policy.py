"""The release policy: who may approve a production release, and the rules of the approval gate.

It is a file on the worker, never something the Prefect API can write: the deployment or the
worker names it (``GANTRY_RELEASE_POLICY``), else ``release-policy.toml`` in the state folder;
in Kubernetes a mounted Secret or ConfigMap. A run cannot pick another one. A missing or bad
file is an error with a clear message, never a silent default: without it nobody can approve.

```toml
allowed_signers = [                      # git's allowed-signers format: principal keytype key
  "alice@example.com ssh-ed25519 AAAAC3Nza...",
]
approval_timeout = 3600                  # seconds a release waits for an approval
allow_self_approval = false              # may the commit's author approve it?
allow_rollback_without_approval = false
max_clock_skew = 600                     # seconds a signed statement's time may be off
waive_failed_scan = false                # release an image whose signed scan verdict failed?
allow_unscanned = false                  # release an image no scan examined (no scanner set up)?
```
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.settings import StackSettings

POLICY_ENV = "GANTRY_RELEASE_POLICY"
POLICY_FILE = "release-policy.toml"
# Key types ssh-keygen signs with; a line without one is a mistake, not a signer.
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519", "sk-ecdsa-sha2-")


class PolicyError(RuntimeError):
    """The release policy file is missing or invalid: nobody can approve a release."""


def _principals(line: str) -> list[str]:
    return [p for p in line.split(None, 1)[0].split(",") if p]


class ReleasePolicy(BaseModel):
    """What the release flow's approval gate enforces."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_signers: list[str] = Field(
        min_length=1, description="allowed-signers lines: principal(s) [options] keytype key"
    )
    approval_timeout: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    allow_self_approval: bool = False
    allow_rollback_without_approval: bool = False
    max_clock_skew: int = Field(default=600, gt=0, le=24 * 3600)
    waive_failed_scan: bool = False
    # A skipped scan is not a passed one: only a stack with no scanner on purpose allows it.
    allow_unscanned: bool = False

    @field_validator("allowed_signers", mode="before")
    @classmethod
    def _lines(cls, value: object) -> object:
        # A pasted allowed_signers file (one string) works as well as a list of lines.
        if isinstance(value, str):
            value = value.splitlines()
        if not isinstance(value, list):
            return value
        lines = [str(line).strip() for line in value]
        return [line for line in lines if line and not line.startswith("#")]

    @field_validator("allowed_signers")
    @classmethod
    def _well_formed(cls, lines: list[str]) -> list[str]:
        for number, line in enumerate(lines, 1):
            words = line.split()
            if len(words) < 3 or not any(w.startswith(_KEY_TYPES) for w in words[1:]):
                raise ValueError(f"signer {number} is not 'principal [options] keytype key'")
            if not all("@" in p for p in _principals(line)):
                raise ValueError(f"signer {number}: principals are email addresses")
        return lines

    def principals(self) -> list[str]:
        """Everyone the list lets approve, in its order."""
        return [p for line in self.allowed_signers for p in _principals(line)]


def policy_path(env: Mapping[str, str] | None = None) -> Path:
    """The file the worker reads: ``GANTRY_RELEASE_POLICY``, else the state folder's."""
    environ = os.environ if env is None else env
    named = environ.get(POLICY_ENV, "").strip()
    if named:
        return Path(named)
    return StackSettings().state_dir / POLICY_FILE


def load_release_policy(path: Path | None = None) -> ReleasePolicy:
    """The policy in ``path`` (default: ``policy_path()``); PolicyError says what is wrong."""
    where = path or policy_path()
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(
            f"no release policy file at {where}: nobody can approve a release "
            f"(write one, or name it in {POLICY_ENV})"
        ) from None
    except OSError as exc:
        raise PolicyError(f"cannot read the release policy file {where}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"the release policy file {where} is not valid TOML: {exc}") from None
    try:
        return ReleasePolicy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise PolicyError(f"the release policy file {where} is invalid: {problems}") from None


def render_policy(policy: ReleasePolicy) -> str:
    """The policy as the TOML file that holds it (what the demo writes)."""
    signers = "".join(f"  {_toml_string(line)},\n" for line in policy.allowed_signers)
    return (
        f"allowed_signers = [\n{signers}]\n"
        f"approval_timeout = {policy.approval_timeout}\n"
        f"allow_self_approval = {str(policy.allow_self_approval).lower()}\n"
        f"allow_rollback_without_approval = {str(policy.allow_rollback_without_approval).lower()}\n"
        f"max_clock_skew = {policy.max_clock_skew}\n"
        f"waive_failed_scan = {str(policy.waive_failed_scan).lower()}\n"
        f"allow_unscanned = {str(policy.allow_unscanned).lower()}\n"
    )


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def write_policy(path: Path, policy: ReleasePolicy) -> None:
    """Write ``policy`` to ``path`` (0644: it holds public keys only), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(render_policy(policy), encoding="utf-8")
    partial.chmod(0o644)
    partial.replace(path)
