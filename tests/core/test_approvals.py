"""Signed approval statements and the release policy file, with the real ssh-keygen."""

from __future__ import annotations

import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.approvals import (
    ApprovalStatement,
    SignatureRefused,
    allowed_signer_line,
    default_key,
    generate_key,
    sign_statement,
    utc_timestamp,
    verify_statement,
)
from core.release_policy import (
    POLICY_ENV,
    POLICY_FILE,
    PolicyError,
    ReleasePolicy,
    load_release_policy,
    policy_path,
    write_policy,
)

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {who: folder / who for who in ("alice", "mallory")}


@pytest.fixture(scope="module")
def allowed(keys: dict[str, Path]) -> list[str]:
    for who, key in keys.items():
        generate_key(key, f"{who}@example.invalid")
    return [allowed_signer_line("alice@example.invalid", keys["alice"].with_suffix(".pub"))]


def statement(**changes: object) -> ApprovalStatement:
    fields: dict[str, object] = {
        "run": str(uuid.UUID(int=1)),
        "candidate": "rc-1",
        "digests": [DIGEST_B, DIGEST_A],
        "decision": "approve",
        "reason": "looks good",
        "time": "2025-05-01T12:00:00Z",
    }
    return ApprovalStatement.model_validate({**fields, **changes})


def test_the_canonical_form_is_sorted_compact_json_whatever_the_digest_order() -> None:
    expected = (
        '{"candidate":"rc-1","decision":"approve","digests":["'
        + DIGEST_A
        + '","'
        + DIGEST_B
        + '"],"reason":"looks good","run":"00000000-0000-0000-0000-000000000001",'
        '"time":"2025-05-01T12:00:00Z"}'
    )
    assert statement().canonical() == expected.encode()
    assert statement(digests=[DIGEST_A, DIGEST_B]).canonical() == statement().canonical()


@pytest.mark.parametrize(
    "changes",
    [
        {"time": "2025-05-01 12:00:00"},
        {"time": "2025-13-01T12:00:00Z"},
        {"digests": ["latest"]},
        {"decision": "maybe"},
        {"run": "not-a-uuid"},
        {"extra": "field"},
    ],
)
def test_a_malformed_statement_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        statement(**changes)


def test_a_statement_signed_by_an_allowed_key_verifies_as_its_principal(
    keys: dict[str, Path], allowed: list[str]
) -> None:
    signed = statement(time=utc_timestamp())
    signature = sign_statement(signed, keys["alice"])
    assert signature.startswith("-----BEGIN SSH SIGNATURE-----")
    assert verify_statement(signed, signature, allowed) == ["alice@example.invalid"]
    assert signed.skew() < 3600


def test_a_signature_over_other_words_or_by_another_key_is_refused(
    keys: dict[str, Path], allowed: list[str]
) -> None:
    signature = sign_statement(statement(), keys["alice"])
    with pytest.raises(SignatureRefused, match="does not match"):
        verify_statement(statement(decision="reject"), signature, allowed)
    with pytest.raises(SignatureRefused, match="does not match"):
        verify_statement(statement(), signature, allowed, namespace="git")
    foreign = sign_statement(statement(), keys["mallory"])
    with pytest.raises(SignatureRefused, match="not on the allowed signers"):
        verify_statement(statement(), foreign, allowed)
    for junk in ("", "   ", "hello"):
        with pytest.raises(SignatureRefused):
            verify_statement(statement(), junk, allowed)


def test_a_refusal_never_repeats_the_signature(keys: dict[str, Path], allowed: list[str]) -> None:
    foreign = sign_statement(statement(), keys["mallory"])
    with pytest.raises(SignatureRefused) as refused:
        verify_statement(statement(), foreign, allowed)
    body = foreign.splitlines()[1]
    assert body not in str(refused.value)


def test_generated_keys_are_private_and_the_default_key_is_looked_up_in_order(
    tmp_path: Path, keys: dict[str, Path], allowed: list[str]
) -> None:
    assert allowed
    assert stat.S_IMODE(keys["alice"].stat().st_mode) == 0o600
    ssh = tmp_path / ".ssh"
    assert default_key(tmp_path) is None
    generate_key(ssh / "id_rsa", "x@example.invalid")
    assert default_key(tmp_path) == ssh / "id_rsa"
    generate_key(ssh / "id_ed25519", "x@example.invalid")
    assert default_key(tmp_path) == ssh / "id_ed25519"


def test_skew_counts_both_ways() -> None:
    now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    assert statement().skew(now + timedelta(minutes=5)) == 300
    assert statement().skew(now - timedelta(minutes=5)) == 300


def test_the_policy_file_round_trips_and_names_its_principals(
    tmp_path: Path, allowed: list[str]
) -> None:
    path = tmp_path / "policy.toml"
    policy = ReleasePolicy(
        allowed_signers=[*allowed, allowed[0].replace("alice@", "ops@", 1)],
        approval_timeout=120,
        allow_rollback_without_approval=True,
    )
    write_policy(path, policy)
    assert load_release_policy(path) == policy
    assert policy.principals() == ["alice@example.invalid", "ops@example.invalid"]
    # A pasted allowed_signers file works as one string.
    path.write_text('allowed_signers = """\n# ops\n' + allowed[0] + '\n"""\n')
    assert load_release_policy(path).allowed_signers == allowed


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no release policy file"),
        ("allowed_signers = [", "not valid TOML"),
        ("allowed_signers = []\n", "allowed_signers"),
        ('allowed_signers = ["alice ssh-ed25519 AAAA"]\n', "principals are email addresses"),
        ('allowed_signers = ["alice@example.invalid AAAA"]\n', "keytype key"),
        (
            'allowed_signers = ["a@b.c ssh-ed25519 AAAA"]\napproval_timeout = 0\n',
            "approval_timeout",
        ),
        ('allowed_signers = ["a@b.c ssh-ed25519 AAAA"]\nskip_approval = true\n', "skip_approval"),
    ],
)
def test_a_missing_or_bad_policy_file_is_an_error_that_says_why(
    tmp_path: Path, content: str | None, says: str
) -> None:
    path = tmp_path / POLICY_FILE
    if content is not None:
        path.write_text(content)
    with pytest.raises(PolicyError, match=says) as refused:
        load_release_policy(path)
    assert str(path) in str(refused.value)


def test_the_policy_path_is_the_workers_setting_else_the_state_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert policy_path({POLICY_ENV: "/etc/gantry/p.toml"}) == Path("/etc/gantry/p.toml")
    monkeypatch.setenv("GANTRY_HOME", str(tmp_path))
    assert policy_path({}) == tmp_path.resolve() / POLICY_FILE
