"""Settings of the webhook receiver, read from the environment (``GANTRY_*``).

The receiver refuses to start with an empty, short or placeholder secret: a guessable secret
would let anyone on the internet start pipelines. It also refuses to start without
``GANTRY_WEBHOOK_REPOSITORIES``, the organizations and repositories it serves: a forgotten
allowlist must not mean "every repository whose webhook knows the secret"; ``*`` says that on
purpose.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

MIN_SECRET_LENGTH = 16
MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
# Values people paste from examples; compared case-insensitively, ignoring separators.
PLACEHOLDER_SECRETS = frozenset(
    {
        "changeme",
        "changemeplease",
        "secret",
        "yoursecret",
        "mysecret",
        "webhooksecret",
        "yourwebhooksecret",
        "githubwebhooksecret",
        "password",
        "placeholder",
        "example",
        "test",
        "todo",
        "xxx",
        "replaceme",
    }
)


class SettingsError(ValueError):
    """The receiver's settings are missing or unsafe; the message says which and why."""


def _is_placeholder(value: str) -> bool:
    folded = "".join(ch for ch in value.lower() if ch.isalnum())
    if folded in PLACEHOLDER_SECRETS or len(set(folded)) <= 1:
        return True
    return any(folded == word * (len(folded) // len(word)) for word in PLACEHOLDER_SECRETS)


def check_secret(value: SecretStr, name: str) -> SecretStr:
    text = value.get_secret_value()
    if not text.strip():
        raise ValueError(f"{name} is empty; set it to the secret configured on the GitHub webhook")
    if _is_placeholder(text):
        raise ValueError(f"{name} is a placeholder value; use a long random value")
    if len(text) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{name} is shorter than {MIN_SECRET_LENGTH} characters; use a long random value "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return value


# GitHub's ``author_association`` values of people who may push to the repository or manage it.
TRUSTED_ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR")
APPROVAL_ENV = "GANTRY_WEBHOOK_APPROVAL"
DEFAULT_POLICY_KEY = "*"


class ApprovalPolicy(BaseModel):
    """Whose fork pull requests run at once, and the label with which a maintainer lets one run.

    Fail closed: any association not listed as trusted (CONTRIBUTOR, FIRST_TIME_CONTRIBUTOR,
    FIRST_TIMER, NONE, MANNEQUIN, or a value GitHub adds later) waits for the label.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    trusted_associations: tuple[str, ...] = TRUSTED_ASSOCIATIONS
    approval_label: str = Field(default="gantry:approved", min_length=1, max_length=100)

    @field_validator("trusted_associations")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(item.upper() for item in value)

    def trusts(self, association: str | None) -> bool:
        return association is not None and association.upper() in self.trusted_associations


REPOSITORIES_ENV = "GANTRY_WEBHOOK_REPOSITORIES"
_ENTRY = re.compile(r"^(?:\*|[A-Za-z0-9_.-]{1,100}/(?:\*|[A-Za-z0-9_.-]{1,100}))$")


class RepositoryAllowlist(BaseModel):
    """Which repositories' deliveries may start runs: ``owner/name``, ``owner/*`` or ``*``.

    Names are compared case-insensitively, as GitHub does.
    """

    model_config = ConfigDict(frozen=True)

    entries: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> RepositoryAllowlist:
        """``"acme/*, other/svc"``; ValueError for an empty list or a malformed entry."""
        entries = tuple(part.strip() for part in text.split(",") if part.strip())
        if not entries:
            raise ValueError(
                f"{REPOSITORIES_ENV} is empty: list the organizations or repositories this "
                "receiver serves (acme/*, acme/api), or * for every repository"
            )
        bad = [entry for entry in entries if not _ENTRY.match(entry)]
        if bad:
            raise ValueError(
                f"{REPOSITORIES_ENV} has {len(bad)} malformed entries; each must be owner/name, "
                "owner/* or *"
            )
        return cls(entries=entries)

    def allows(self, full_name: str) -> bool:
        owner = full_name.partition("/")[0].casefold()
        wanted = full_name.casefold()
        for entry in self.entries:
            folded = entry.casefold()
            if folded in ("*", wanted) or folded == f"{owner}/*":
                return True
        return False


def repositories_from_env() -> RepositoryAllowlist | None:
    """``GANTRY_WEBHOOK_REPOSITORIES`` as read now; None when unset or invalid (serves none)."""
    try:
        return RepositoryAllowlist.parse(os.environ.get(REPOSITORIES_ENV, ""))
    except ValueError:
        return None


ApprovalPolicies = dict[str, ApprovalPolicy]
_POLICIES: TypeAdapter[ApprovalPolicies] = TypeAdapter(ApprovalPolicies)


def policy_for(policies: ApprovalPolicies, repository: str) -> ApprovalPolicy:
    """The repository's own policy (names compared case-insensitively), else "*", else default."""
    wanted = repository.lower()
    for name, policy in policies.items():
        if name.lower() == wanted:
            return policy
    return policies.get(DEFAULT_POLICY_KEY) or ApprovalPolicy()


@cache
def _parse_policies(raw: str) -> ApprovalPolicies:
    return _POLICIES.validate_python(json.loads(raw)) if raw.strip() else {}


def approval_policies_from_env() -> ApprovalPolicies:
    """``GANTRY_WEBHOOK_APPROVAL`` as read now (cached per value, so a changed variable counts).

    ``ReceiverSettings`` validates the same variable at start, so a bad value never gets here
    in a running receiver.
    """
    return _parse_policies(os.environ.get(APPROVAL_ENV, ""))


POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


class StoreSettings(BaseSettings):
    """Where deliveries are recorded; all that tools reading the store need (no secret)."""

    model_config = SettingsConfigDict(
        env_prefix="GANTRY_", extra="ignore", hide_input_in_errors=True
    )

    webhook_store: str | None = Field(
        default=None,
        description="sqlite:///path, a file path, or postgresql://... (default: the state folder)",
    )
    home: Path = Field(default=Path(".gantry"), description="state folder")

    @property
    def state_dir(self) -> Path:
        return self.home.resolve()

    @property
    def store_url(self) -> str:
        if self.webhook_store:
            return self.webhook_store
        return f"sqlite:///{self.state_dir / 'webhooks.db'}"


class DispatchSettings(StoreSettings):
    """What the dispatcher needs: the store, its polls and its backoff (no secret)."""

    # The dispatcher in the receiver is woken on each delivery; this poll is only a safety net.
    webhook_poll_seconds: float = Field(default=30.0, gt=0)
    # The dispatcher in its own process (webhooks.dispatch_process) is not woken: it polls.
    webhook_dispatch_poll_seconds: float = Field(default=0.1, gt=0)
    # ...at this lower CPU priority (os.nice), so that the receiver gets the CPU first.
    webhook_dispatch_niceness: int = Field(default=10, ge=0, le=19)
    webhook_backoff_initial: float = Field(default=0.5, gt=0)
    webhook_backoff_cap: float = Field(default=30.0, gt=0)


class ReceiverSettings(DispatchSettings):
    """Where the receiver listens, which secrets it accepts and where it records deliveries."""

    webhook_secret: SecretStr = Field(description="the secret set on the GitHub webhook")
    # While rotating, GitHub may still sign with the old secret: both are accepted.
    webhook_secret_previous: SecretStr | None = None
    host: str = "127.0.0.1"
    webhook_port: int = Field(default=8787, ge=1, le=65535)
    webhook_max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1024)
    # "thread": the receiver dispatches on a thread of its own; "process": it only records,
    # and a separate dispatcher process (webhooks.dispatch_process) dispatches.
    webhook_dispatcher: Literal["thread", "process"] = "thread"
    # GANTRY_WEBHOOK_APPROVAL, per repository full name (or "*" for all others): who runs at
    # once and the approval label, e.g. {"acme/api": {"approval_label": "ok-to-test"}}; see
    # docs/security.md. Declared here so that a bad value refuses to start the receiver; the
    # event mapping reads the same variable (``approval_policies_from_env``).
    webhook_approval: ApprovalPolicies = Field(default_factory=dict)
    # GANTRY_WEBHOOK_REPOSITORIES: "acme/*,other/svc" or "*"; required (see the module's doc).
    webhook_repositories: str = Field(description="owner/name, owner/* or *, comma-separated")
    # How many receivers serve the same webhook (set by the deployment): more than one needs
    # a shared store, or each would keep deliveries the others never see.
    webhook_replicas: int = Field(default=1, ge=1)
    # Open connections at most; past it, requests are answered 503 at once.
    webhook_max_connections: int = Field(default=1000, ge=1)
    # The unauthenticated part of a request is bounded in time: its headers, then its body.
    # GitHub gives up on an answer after 10 s, so a slower upload cannot be GitHub's.
    webhook_header_timeout: float = Field(default=5.0, gt=0)
    webhook_body_timeout: float = Field(default=10.0, gt=0)
    # On SIGTERM: stop accepting, let requests in flight finish for up to this long.
    webhook_drain_seconds: int = Field(default=20, ge=1)

    @field_validator("webhook_replicas")
    @classmethod
    def _replicas_share_a_store(cls, value: int, info: ValidationInfo) -> int:
        store = info.data.get("webhook_store")
        if value > 1 and not (store and store.startswith(POSTGRES_SCHEMES)):
            raise ValueError(
                f"GANTRY_WEBHOOK_REPLICAS is {value}, but the delivery store is a SQLite file: "
                "each replica would keep deliveries of its own, which the others never "
                "dispatch and a restart of its pod loses; set GANTRY_WEBHOOK_STORE to a "
                "postgresql:// URL shared by the replicas"
            )
        return value

    @field_validator("webhook_repositories")
    @classmethod
    def _repositories_are_valid(cls, value: str) -> str:
        RepositoryAllowlist.parse(value)
        return value

    @property
    def repositories(self) -> RepositoryAllowlist:
        return RepositoryAllowlist.parse(self.webhook_repositories)

    @field_validator("webhook_secret")
    @classmethod
    def _secret_is_safe(cls, value: SecretStr) -> SecretStr:
        return check_secret(value, "GANTRY_WEBHOOK_SECRET")

    @field_validator("webhook_secret_previous")
    @classmethod
    def _previous_is_safe(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        return check_secret(value, "GANTRY_WEBHOOK_SECRET_PREVIOUS")

    @property
    def secrets(self) -> tuple[SecretStr, ...]:
        """Every secret a delivery may be signed with, the current one first."""
        if self.webhook_secret_previous is None:
            return (self.webhook_secret,)
        return (self.webhook_secret, self.webhook_secret_previous)


_S = TypeVar("_S", bound=StoreSettings)


def load_dispatch_settings(**overrides: object) -> DispatchSettings:
    """The dispatcher's settings, validation errors as one message without values."""
    return _load(DispatchSettings, "the dispatcher", overrides)


def load_settings(**overrides: object) -> ReceiverSettings:
    """Read the settings, turning validation errors into one clear message without values."""
    return _load(ReceiverSettings, "the webhook receiver", overrides)


def _load(kind: type[_S], who: str, overrides: dict[str, object]) -> _S:
    try:
        return kind(**overrides)  # type: ignore[arg-type]
    except SourceError as exc:
        # A JSON-valued variable (GANTRY_WEBHOOK_APPROVAL) that is not JSON; no value shown.
        found = re.search(r'field "(\w+)"', str(exc))
        env = f"GANTRY_{found.group(1).upper()}" if found else "a GANTRY_* variable"
        raise SettingsError(f"{who} cannot start: {env} is not valid JSON") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            env = f"GANTRY_{field.upper()}"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "missing":
                message = "is not set"
            problems.append(f"{env}: {message}" if env not in message else message)
        raise SettingsError(f"{who} cannot start: " + "; ".join(problems)) from None
