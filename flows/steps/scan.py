"""The dependency vulnerability scan: the checkout's manifests tested by Snyk.

Without credentials (or on a fork's pull request, which gets no secrets) the stage is skipped
as "not configured", never passed: no answer from Snyk is not a clean bill of health.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State

from blocks.snyk import SnykCredentials, load_snyk_credentials
from clients.snyk import Finding, RetryPolicy, SnykAuthError, SnykClient, SnykError
from flows.config import SEVERITY_ORDER, Scan
from flows.logs import StepLogger, step_logger
from flows.results import StageResult, StageStatus, stage_state
from flows.steps.manifests import Manifest, ManifestError, load_manifests

STAGE = "scan"
# Snyk's REST limit is 180 requests a minute per user: a few at a time stays well under it.
PACKAGE_CONCURRENCY = 4
# Findings named in a failed stage's detail; the full list is in data["findings"].
DETAIL_FINDINGS = 5


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.get(severity, 0)


async def _scan_manifest(
    client: SnykClient, manifest: Manifest, logger: StepLogger
) -> list[Finding]:
    if manifest.requirements:
        logger.info("scan: testing %s with Snyk", manifest.path)
        return await client.test_requirements(manifest.requirements)
    if not client.org_id:
        # The REST API is per organization; pinned versions are valid requirements too.
        logger.info("scan: no Snyk org id, testing %s's pins as requirements", manifest.path)
        text = "".join(f"{pin.name}=={pin.version}\n" for pin in manifest.pins)
        return await client.test_requirements(text)
    logger.info("scan: testing %d pinned packages of %s", len(manifest.pins), manifest.path)
    gate = asyncio.Semaphore(PACKAGE_CONCURRENCY)

    async def one(ecosystem: str, name: str, version: str) -> list[Finding]:
        async with gate:
            return await client.package_issues(ecosystem, name, version)

    # A task group, not gather: the first failure cancels the lookups still in flight, so none
    # outlives the client or keeps asking Snyk with a token it just refused.
    try:
        async with asyncio.TaskGroup() as group:
            lookups = [
                group.create_task(one(pin.ecosystem, pin.name, pin.version))
                for pin in manifest.pins
            ]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [finding for lookup in lookups for finding in lookup.result()]


async def collect_findings(
    credentials: SnykCredentials,
    manifests: list[Manifest],
    logger: StepLogger,
    policy: RetryPolicy | None = None,
) -> list[Finding]:
    """Every distinct finding of ``manifests``, each naming the first manifest it came through."""
    seen: dict[tuple[str, str, str], Finding] = {}
    async with SnykClient(
        credentials.token,
        api_url=credentials.api_url,
        org_id=credentials.org_id,
        timeout=credentials.timeout,
        policy=policy,
    ) as client:
        for manifest in manifests:
            for finding in await _scan_manifest(client, manifest, logger):
                key = (finding.id, finding.package.lower(), finding.version)
                seen.setdefault(key, finding.model_copy(update={"manifest": manifest.path}))
    return sorted(seen.values(), key=lambda f: (-_rank(f.severity), f.package.lower(), f.id))


def severity_counts(findings: Iterable[Finding]) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITY_ORDER, 0)
    for finding in findings:
        counts[finding.severity] = counts.get(finding.severity, 0) + 1
    return counts


def findings_table(findings: Iterable[Finding | Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows for a summary table, worst first: severity, package, id, title, fixed in, manifest."""
    parsed = [f if isinstance(f, Finding) else Finding.model_validate(f) for f in findings]
    parsed.sort(key=lambda f: (-_rank(f.severity), f.package.lower(), f.id))
    return [
        {
            "severity": f.severity,
            "package": f"{f.package}@{f.version}",
            "id": f.id,
            "title": f.title,
            "fixed_in": ", ".join(f.fixed_in),
            "manifest": f.manifest,
        }
        for f in parsed
    ]


def _describe(finding: Finding) -> str:
    return f"{finding.id} ({finding.severity}) in {finding.package}@{finding.version}"


def _result(
    status: StageStatus, started: float, detail: str, data: dict[str, Any] | None = None
) -> State[StageResult]:
    return stage_state(
        StageResult(
            name=STAGE,
            status=status,
            seconds=round(time.monotonic() - started, 3),
            detail=detail,
            data=data or {},
        )
    )


def judge(
    findings: list[Finding], scan: Scan, manifests: list[str], started: float
) -> State[StageResult]:
    """Failed when a finding reaches ``scan.fail_on``, else passed; both carry every finding."""
    counts = severity_counts(findings)
    data: dict[str, Any] = {
        "findings": [f.model_dump() for f in findings],
        "counts": counts,
        "manifests": manifests,
        "fail_on": scan.fail_on,
    }
    offending = [f for f in findings if _rank(f.severity) >= _rank(scan.fail_on)]
    if offending:
        named = ", ".join(_describe(f) for f in offending[:DETAIL_FINDINGS])
        more = len(offending) - DETAIL_FINDINGS
        detail = f"{len(offending)} at or above {scan.fail_on}: {named}"
        return _result(
            StageStatus.FAILED, started, detail + (f" and {more} more" if more > 0 else ""), data
        )
    if not findings:
        return _result(
            StageStatus.PASSED,
            started,
            f"no known vulnerabilities in {len(manifests)} manifest"
            + ("s" if len(manifests) != 1 else ""),
            data,
        )
    below = ", ".join(f"{n} {sev}" for sev, n in counts.items() if n)
    return _result(
        StageStatus.PASSED, started, f"{len(findings)} below {scan.fail_on} ({below})", data
    )


@task(name=STAGE, cache_policy=NO_CACHE)
async def scan_dependencies(
    checkout: Path, scan: Scan, fork: bool = False, *, policy: RetryPolicy | None = None
) -> State[StageResult]:
    """Test the checkout's dependency manifests with Snyk; fail at ``scan.fail_on`` or worse.

    ``policy`` bounds Snyk retries (the client's defaults when None).
    """
    logger = step_logger(STAGE)
    started = time.monotonic()
    if fork:
        logger.info("scan: skipped, fork pull requests get no secrets")
        return _result(
            StageStatus.SKIPPED, started, "not configured: fork pull requests get no secrets"
        )
    credentials = await load_snyk_credentials()
    if credentials is None:
        logger.info("scan: skipped, no Snyk token (block gantry-snyk or SNYK_TOKEN)")
        return _result(StageStatus.SKIPPED, started, "not configured: no Snyk token")
    try:
        manifests = load_manifests(checkout, scan.manifests)
    except ManifestError as exc:
        logger.error("scan: %s", exc)
        return _result(StageStatus.FAILED, started, str(exc))
    if not manifests:
        logger.info("scan: skipped, no dependency manifests found")
        return _result(StageStatus.SKIPPED, started, "no dependency manifests found")
    paths = [m.path for m in manifests]
    try:
        async with asyncio.timeout(scan.timeout):
            findings = await collect_findings(credentials, manifests, logger, policy)
    except TimeoutError:
        detail = f"Snyk did not answer within the scan timeout ({scan.timeout:.0f}s)"
        logger.error("scan: %s", detail)
        return _result(StageStatus.FAILED, started, detail, {"manifests": paths})
    except SnykError as exc:
        detail = f"Snyk scan failed: {exc.message}"
        if isinstance(exc, SnykAuthError):
            detail += " (check the token and org id in the gantry-snyk block or SNYK_TOKEN)"
        logger.error("scan: %s", detail)
        return _result(StageStatus.FAILED, started, detail, {"manifests": paths})
    state = judge(findings, scan, paths, started)
    result = state.data
    if isinstance(result, StageResult):
        logger.info("scan: %s: %s", result.status.value, result.detail)
    return state
