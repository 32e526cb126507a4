"""Waiting for Deployments to roll out, the way ``kubectl rollout status`` judges them."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from flows.deploy.kubernetes.api import KubeApi, ResourceType


class RolloutFailedError(RuntimeError):
    """A Deployment cannot roll out (its progress deadline passed, or it disappeared)."""


class RolloutTimeoutError(RuntimeError):
    """Deployments were still rolling out when the deploy's time ran out."""


@dataclass(frozen=True)
class RolloutState:
    done: bool
    failed: bool
    detail: str


def rollout_state(deployment: dict[str, Any]) -> RolloutState:
    """Done, failed or still going, from a live Deployment's spec and status."""
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = int(metadata.get("generation") or 0)
    observed = int(status.get("observedGeneration") or 0)
    if observed < generation:
        return RolloutState(
            False, False, f"waiting for the controller to see generation {generation}"
        )
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "Progressing"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            message = condition.get("message") or "no progress within progressDeadlineSeconds"
            return RolloutState(False, True, f"progress deadline exceeded: {message}")
    wanted = int(spec["replicas"]) if spec.get("replicas") is not None else 1
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return RolloutState(False, False, f"{updated} of {wanted} replicas updated")
    if total > updated:
        return RolloutState(False, False, f"{total - updated} old replicas still terminating")
    if available < wanted:
        return RolloutState(False, False, f"{available} of {wanted} updated replicas available")
    return RolloutState(True, False, f"{available} of {wanted} replicas available")


@dataclass(frozen=True)
class Polling:
    """Bounded, jittered waits between checks: quick at first, then easing off."""

    first: float = 2.0
    longest: float = 10.0

    def delays(self) -> Any:
        delay = self.first
        while True:
            yield delay * random.uniform(0.8, 1.0)  # noqa: S311 - jitter, not security
            delay = min(delay * 1.5, self.longest)


async def wait_for_rollouts(
    api: KubeApi,
    rtype: ResourceType,
    deployments: list[tuple[str | None, str]],
    timeout: float,
    polling: Polling,
) -> dict[str, str]:
    """Wait until every (namespace, name) Deployment is available; its final detail by name."""
    deadline = time.monotonic() + timeout
    pending = dict.fromkeys(deployments, "not checked yet")
    finished: dict[str, str] = {}
    delays = polling.delays()
    while True:
        for namespace, name in list(pending):
            live = await api.get(rtype, namespace, name)
            if live is None:
                raise RolloutFailedError(f"Deployment/{name} disappeared during its rollout")
            state = rollout_state(live)
            if state.failed:
                raise RolloutFailedError(f"Deployment/{name}: {state.detail}")
            if state.done:
                finished[name] = state.detail
                del pending[(namespace, name)]
            else:
                pending[(namespace, name)] = state.detail
        if not pending:
            return finished
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            waiting = "; ".join(
                f"Deployment/{name}: {detail}" for (_, name), detail in pending.items()
            )
            raise RolloutTimeoutError(f"not available after {timeout:g} s ({waiting})")
        await asyncio.sleep(min(next(delays), remaining))
