"""The supply-chain stages of the pipelines: ``attest`` after a merge's push, ``provenance``
before a release's approval gate.

Both talk to the worker's registry with the push credentials (the saved block, else the
environment). ``attest`` signs with the worker's key; a failure is retried a bounded number of
times (the registry or syft may answer a moment later) and then fails the merge's delivery.
``provenance`` trusts only the registry's signed statements, never the candidate record that
named the digests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from blocks.containers import load_registry_credentials
from clients.oci_artifacts import ATTESTATION_SUFFIX, SBOM_SUFFIX, artifact_tag
from clients.registry import RegistryClient
from flows.logs import step_logger
from flows.results import StageResult, StageStatus, stage_state
from flows.supply.attest import AttestError, attest_image
from flows.supply.keys import SupplyKeyError, TrustedKeys, load_signing_key
from flows.supply.provenance import SCAN_PASSED, SCAN_SKIPPED, BuildFacts
from flows.supply.verify import Check, Expected, Verification, verify_release

ATTEST_RETRIES = 2
ATTEST_TIMEOUT = 900.0  # seconds per attempt: syft reads every layer of every image
VERIFY_TIMEOUT = 300.0
SCAN_FAILED = "failed"


def scan_verdict(stages: list[StageResult]) -> tuple[str, dict[str, int]]:
    """What the merge's own scan stage decided, and its counts, for the signed statement."""
    scan = next((s for s in stages if s.name == "scan"), None)
    if scan is None or scan.status == StageStatus.SKIPPED:
        return SCAN_SKIPPED, {}
    counts = scan.data.get("counts")
    tally = (
        {str(k): v for k, v in counts.items() if isinstance(v, int)}
        if isinstance(counts, Mapping)
        else {}
    )
    passed = scan.status in (StageStatus.PASSED, StageStatus.CACHED)
    return (SCAN_PASSED if passed else SCAN_FAILED), tally


async def _registry(address: str) -> RegistryClient:
    credentials = await load_registry_credentials(address)
    return RegistryClient(
        address,
        credentials.username if credentials is not None else None,
        credentials.password if credentials is not None else None,
    )


def attachment_refs(pinned: str) -> dict[str, str]:
    """cosign's references of what is attached to ``IMAGE@sha256:HEX``: ``IMAGE:sha256-HEX.*``."""
    image, _, digest = pinned.partition("@")
    return {
        "sbom": f"{image}:{artifact_tag(digest, SBOM_SUFFIX)}",
        "provenance": f"{image}:{artifact_tag(digest, ATTESTATION_SUFFIX)}",
    }


@task(
    name="attest-images",
    cache_policy=NO_CACHE,
    retries=ATTEST_RETRIES,
    retry_delay_seconds=5,
    timeout_seconds=ATTEST_TIMEOUT,
)
async def attest_images(
    images: dict[str, str],
    registry: str,
    repository: str,
    repository_id: int | None,
    commit: str,
    flow_run_id: str,
    flow_run_url: str | None,
    verdict: str,
    counts: dict[str, int],
) -> State[StageResult]:
    """The SBOM and signed provenance of every pushed image (``name -> HOST/PATH@sha256:...``)."""
    logger = step_logger("attest")
    started = time.monotonic()
    try:
        key = await asyncio.to_thread(load_signing_key)
    except SupplyKeyError as exc:
        return stage_state(StageResult(name="attest", status=StageStatus.FAILED, detail=str(exc)))
    client = await _registry(registry)
    attested: dict[str, dict[str, str]] = {}
    for name, pinned in sorted(images.items()):
        image, _, digest = pinned.partition("@")
        facts = BuildFacts(
            image=image,
            digest=digest,
            repository=repository,
            repository_id=repository_id,
            commit=commit,
            flow_run_id=flow_run_id,
            flow_run_url=flow_run_url,
            scan_verdict=verdict,
            scan_counts=counts,
        )
        try:
            done = await asyncio.to_thread(attest_image, facts, client, key=key)
        except AttestError as exc:
            logger.error("attesting %s failed: %s", name, exc)
            return stage_state(
                StageResult(
                    name="attest",
                    status=StageStatus.FAILED,
                    seconds=round(time.monotonic() - started, 3),
                    detail=f"{name}: {exc}",
                    data={"attestations": attested},
                )
            )
        attested[name] = attachment_refs(pinned)
        logger.info(
            "attested %s: SBOM %s, provenance signed by key %s",
            pinned,
            done.sbom_digest,
            done.keyid[:16],
        )
    return stage_state(
        StageResult(
            name="attest",
            status=StageStatus.PASSED,
            seconds=round(time.monotonic() - started, 3),
            detail=f"SBOM and signed provenance of {len(attested)} image(s), key {key.keyid[:16]}",
            data={"attestations": attested, "keyid": key.keyid},
        )
    )


def _outside(pinned: str, registry: RegistryClient) -> Verification:
    image, _, digest = pinned.partition("@")
    why = f"the image is not in the worker's registry {registry.address}"
    return Verification(image=image, digest=digest, checks=(Check("provenance", False, why),))


def _verify_all(
    images: dict[str, str],
    client: RegistryClient,
    expected: Expected,
    waive_scan: bool,
    allow_unscanned: bool,
) -> list[tuple[str, Verification]]:
    trusted = TrustedKeys.configured()
    found = []
    for name, pinned in sorted(images.items()):
        image, _, digest = pinned.partition("@")
        if not image.startswith(f"{client.address}/"):
            found.append((name, _outside(pinned, client)))
            continue
        result = verify_release(
            image,
            digest,
            expected,
            registry=client,
            trusted=trusted,
            waive_scan=waive_scan,
            allow_unscanned=allow_unscanned,
        )
        found.append((name, result))
    return found


@task(name="verify-provenance", cache_policy=NO_CACHE, timeout_seconds=VERIFY_TIMEOUT)
async def verify_provenance(
    images: dict[str, str],
    registry: str,
    expected: Expected,
    waive_scan: bool = False,
    allow_unscanned: bool = False,
) -> State[StageResult]:
    """Every candidate digest checked against the registry's signed provenance and SBOM.

    Fails naming the first image and check that failed; the data lists every check.
    """
    logger = step_logger("provenance")
    started = time.monotonic()
    client = await _registry(registry)
    try:
        results = await asyncio.to_thread(
            _verify_all, images, client, expected, waive_scan, allow_unscanned
        )
    except SupplyKeyError as exc:
        return stage_state(
            StageResult(name="provenance", status=StageStatus.FAILED, detail=str(exc))
        )
    checks: dict[str, list[dict[str, object]]] = {}
    refused: list[str] = []
    for name, result in results:
        checks[name] = [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks]
        for check in result.checks:
            (logger.info if check.ok else logger.warning)(
                "%s %s: %s: %s", name, "ok" if check.ok else "FAILED", check.name, check.detail
            )
        failed = result.first_failure
        if failed is not None:
            refused.append(f"{name}: check {failed.name} failed: {failed.detail}")
    seconds = round(time.monotonic() - started, 3)
    if not images:
        refused.append("the candidate names no images")
    if refused:
        return stage_state(
            StageResult(
                name="provenance",
                status=StageStatus.FAILED,
                seconds=seconds,
                detail="; ".join(refused),
                data={"checks": checks},
            )
        )
    return stage_state(
        StageResult(
            name="provenance",
            status=StageStatus.PASSED,
            seconds=seconds,
            detail=f"signed provenance and SBOM verified for {len(images)} image(s)",
            data={"checks": checks},
        )
    )
