"""The release policy: who may approve a production release, and how long a release waits."""

from __future__ import annotations

import os

from prefect.blocks.core import Block
from pydantic import Field, field_validator

DEFAULT_BLOCK_NAME = "gantry-release"


class ReleasePolicy(Block):
    """Saved once per installation; the release flow reads it at every run."""

    _block_type_name = "Gantry release policy"
    _block_type_slug = "gantry-release-policy"
    _description = "Approvers of production releases and the approval timeout."

    approvers: list[str] = Field(default_factory=list, description="who may approve or reject")
    approval_timeout: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    allow_rollback_without_approval: bool = False

    @field_validator("approvers")
    @classmethod
    def _clean(cls, value: list[str]) -> list[str]:
        return sorted({name.strip() for name in value if name.strip()})

    def may_approve(self, who: str) -> bool:
        return who.strip() in self.approvers


def policy_from_env() -> ReleasePolicy:
    """GANTRY_RELEASE_APPROVERS (comma-separated), GANTRY_APPROVAL_TIMEOUT (seconds)."""
    approvers = os.environ.get("GANTRY_RELEASE_APPROVERS", "").split(",")
    timeout = int(os.environ.get("GANTRY_APPROVAL_TIMEOUT", "3600"))
    no_approval = os.environ.get("GANTRY_ALLOW_ROLLBACK_WITHOUT_APPROVAL", "") == "1"
    return ReleasePolicy(
        approvers=approvers,
        approval_timeout=timeout,
        allow_rollback_without_approval=no_approval,
    )


async def load_policy(block_name: str = DEFAULT_BLOCK_NAME) -> ReleasePolicy:
    """The saved policy block, else the environment; with no approvers nobody can approve."""
    try:
        loaded = await ReleasePolicy.aload(block_name)
    except ValueError:
        return policy_from_env()
    assert isinstance(loaded, ReleasePolicy)
    return loaded
