"""Prefect internals that Gantry still relies on, each pinned so an upgrade fails here, loudly.

``deployments/worker.py`` overrides ``__dispatch_key__``: Prefect keys its worker type registry by
it and offers no public way to register a worker class under a key other than its ``type``.
Everything else Gantry's worker needs (the pool's name, whether a sync succeeded) comes from
Prefect's public worker API. The warm worker (``deployments/warm/``) has a type of its own,
``gantry-warm``, so Prefect registers it under that key without the hook.
"""

from __future__ import annotations

from prefect.utilities.dispatch import get_dispatch_key, lookup_type
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessWorker

from deployments.worker import GantryKubernetesWorker, GantryProcessWorker, GantryWarmWorker

UPGRADE_HINT = (
    "Prefect no longer keys its worker type registry by BaseWorker.__dispatch_key__; "
    "deployments/worker.py overrides that hook so that GantryProcessWorker and "
    "GantryKubernetesWorker do not replace Prefect's 'process' and 'kubernetes' workers. "
    "Find Prefect's new way to register a worker class under its own key and use it there."
)


def test_prefect_still_keys_worker_classes_by_dispatch_key() -> None:
    assert "__dispatch_key__" in vars(BaseWorker), UPGRADE_HINT
    assert get_dispatch_key(ProcessWorker) == ProcessWorker.type == "process", UPGRADE_HINT


def test_gantrys_workers_register_under_their_own_keys_through_the_hook() -> None:
    assert get_dispatch_key(GantryProcessWorker) == "gantry-process", UPGRADE_HINT
    assert get_dispatch_key(GantryKubernetesWorker) == "gantry-kubernetes", UPGRADE_HINT
    assert lookup_type(BaseWorker, "gantry-process") is GantryProcessWorker, UPGRADE_HINT
    assert lookup_type(BaseWorker, "process") is ProcessWorker, UPGRADE_HINT


def test_the_warm_worker_registers_under_its_own_type_without_the_hook() -> None:
    assert "__dispatch_key__" not in vars(GantryWarmWorker)
    assert get_dispatch_key(GantryWarmWorker) == GantryWarmWorker.type == "gantry-warm"
    assert lookup_type(BaseWorker, "gantry-warm") is GantryWarmWorker
