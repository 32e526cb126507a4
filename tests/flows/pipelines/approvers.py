"""Approvers with real SSH keys, and the release policy file the test stack's worker reads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.approvals import (
    ApprovalStatement,
    Decision,
    allowed_signer_line,
    generate_key,
    sign_statement,
)
from core.release_policy import POLICY_FILE, ReleasePolicy, write_policy
from core.settings import StackSettings
from deployments.runs import ApprovalOutcome, answer_approval, pending_statement, submit_answer

# The test repositories' commits are by this author (tests/plugins/gitrepo.py).
COMMIT_AUTHOR = "test@example.invalid"
EMAILS = {
    "alice": "alice@example.invalid",
    "bob": "bob@example.invalid",
    "mallory": "mallory@example.invalid",  # has a key, is not on the list
    "author": COMMIT_AUTHOR,
}


class Approvers:
    """One SSH key per person in ``folder``; ``write_policy`` lists who may approve."""

    def __init__(self, folder: Path) -> None:
        self.keys = {who: folder / f"{who}_ed25519" for who in EMAILS}
        self.signers = {
            who: allowed_signer_line(EMAILS[who], generate_key(key, EMAILS[who]))
            for who, key in self.keys.items()
        }

    def policy(self, *who: str, **rules: Any) -> ReleasePolicy:
        # The test stack has no scanner: its images' scans are skipped, allowed on purpose.
        rules.setdefault("allow_unscanned", True)
        return ReleasePolicy(allowed_signers=[self.signers[w] for w in who], **rules)

    def write_policy(self, settings: StackSettings, *who: str, **rules: Any) -> ReleasePolicy:
        """The policy file the stack's worker reads (its state folder's), listing ``who``."""
        policy = self.policy(*who, **rules)
        write_policy(settings.state_dir / POLICY_FILE, policy)
        return policy

    def answer(
        self, run_id: str, who: str, decision: Decision = "approve", reason: str = ""
    ) -> ApprovalOutcome:
        """What `gantry approve/reject` does, with ``who``'s key."""
        return asyncio.run(answer_approval(run_id, decision, reason, self.keys[who], wait=60))

    def statement(self, run_id: str, **changes: Any) -> ApprovalStatement:
        """The statement the run waits for, changed as asked (another run, another time...)."""
        statement = asyncio.run(pending_statement(run_id, "approve", ""))
        return statement.model_copy(update=changes)

    def send(self, run_id: str, statement: ApprovalStatement, who: str | None) -> ApprovalOutcome:
        """Resume the run with ``statement``, signed by ``who`` (unsigned when None)."""
        signature = sign_statement(statement, self.keys[who]) if who else ""
        answer = {**statement.model_dump(mode="json"), "signature": signature}
        return asyncio.run(submit_answer(run_id, answer, wait=60))
