import io
import stat
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from core.approvals import ApprovalStatement, sign_statement, utc_timestamp, verify_statement
from core.ports import StackError
from core.release_policy import POLICY_ENV, POLICY_FILE, load_release_policy
from deployments.demo import DEMO_APPROVER, GIT_IDENTITY, ensure_demo_policy, prepare_sample_repo


def test_the_sample_repo_keeps_its_commit_when_nothing_changed(tmp_path: Path) -> None:
    repo, first = prepare_sample_repo(tmp_path)
    assert (repo / "gantry.toml").is_file()
    again, second = prepare_sample_repo(tmp_path)
    assert again == repo
    assert second == first
    assert not list(repo.rglob("__pycache__"))


def test_the_demo_approver_has_its_own_key_on_the_policy_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(POLICY_ENV, raising=False)
    monkeypatch.setenv("GANTRY_HOME", str(tmp_path))
    key = ensure_demo_policy(tmp_path, Console(file=io.StringIO()))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    policy = load_release_policy(tmp_path / POLICY_FILE)
    assert policy.principals() == [DEMO_APPROVER]
    # Not the demo commits' author: the demo's approval is no self-approval.
    assert "user.email=demo@gantry.invalid" in GIT_IDENTITY
    assert DEMO_APPROVER != "demo@gantry.invalid"
    # The signer is that key: a statement it signs verifies against the policy.
    statement = ApprovalStatement(
        run=str(uuid.uuid4()),
        candidate="rc-1",
        digests=[],
        decision="approve",
        time=utc_timestamp(),
    )
    signature = sign_statement(statement, key)
    assert verify_statement(statement, signature, policy.allowed_signers) == [DEMO_APPROVER]
    # A second run keeps the key and the file.
    assert ensure_demo_policy(tmp_path, Console(file=io.StringIO())) == key
    assert load_release_policy(tmp_path / POLICY_FILE) == policy


def test_the_demo_never_rewrites_a_policy_that_does_not_list_its_approver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POLICY_ENV, str(tmp_path / "theirs.toml"))
    mine = 'allowed_signers = ["ops@example.invalid ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"]\n'
    (tmp_path / "theirs.toml").write_text(mine)
    with pytest.raises(StackError, match="does not list the demo approver"):
        ensure_demo_policy(tmp_path, Console(file=io.StringIO()))
    assert (tmp_path / "theirs.toml").read_text() == mine
