"""How a live Deployment's status is judged: done, still going, or failed."""

from __future__ import annotations

from typing import Any

import pytest

from flows.deploy.kubernetes.rollout import Polling, rollout_state


def live(generation: int = 2, replicas: int = 3, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": status,
    }


def test_a_fully_updated_and_available_deployment_is_done() -> None:
    state = rollout_state(
        live(observedGeneration=2, replicas=3, updatedReplicas=3, availableReplicas=3)
    )
    assert state.done and not state.failed


@pytest.mark.parametrize(
    ("deployment", "detail"),
    [
        (live(observedGeneration=1, updatedReplicas=3, availableReplicas=3), "generation 2"),
        (
            live(observedGeneration=2, updatedReplicas=1, availableReplicas=1),
            "1 of 3 replicas updated",
        ),
        (
            {
                "metadata": {"generation": 2},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3},
            },
            "1 old replicas still terminating",
        ),
        (live(observedGeneration=2, updatedReplicas=3, availableReplicas=2), "2 of 3 updated"),
        ({"metadata": {"generation": 1}, "spec": {}}, "generation 1"),
    ],
)
def test_a_deployment_still_rolling_out_is_neither_done_nor_failed(
    deployment: dict[str, Any], detail: str
) -> None:
    state = rollout_state(deployment)
    assert not state.done and not state.failed
    assert detail in state.detail


def test_progress_deadline_exceeded_is_a_failure_with_the_controllers_message() -> None:
    condition = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "api-5d" has timed out progressing.',
    }
    state = rollout_state(live(observedGeneration=2, conditions=[condition]))
    assert state.failed
    assert 'ReplicaSet "api-5d" has timed out progressing.' in state.detail


def test_a_deployment_without_replicas_in_its_spec_wants_one() -> None:
    deployment = live(observedGeneration=2, updatedReplicas=1, availableReplicas=1)
    del deployment["spec"]["replicas"]
    assert rollout_state(deployment).done


def test_polling_waits_grow_and_stay_within_the_longest_wait() -> None:
    delays = Polling(first=0.1, longest=0.5).delays()
    taken = [next(delays) for _ in range(10)]
    assert taken[0] <= 0.1
    assert max(taken) <= 0.5
    assert taken[-1] > taken[0]
