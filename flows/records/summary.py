"""The run summary a person looks at instead of the logs: a table and a report per run.

The table (key ``<pipeline>-summary``, one row per stage) is what the CLI reads back; the
markdown report (``<pipeline>-report``) adds what a person asks next: which images, what the
scan found, where it was deployed, and how the previous run of the same PR or branch went.
Everything a step wrote (details, the last lines of a failed step) is redacted and escaped by
``flows.records.markdown``: it can neither show a secret nor forge the report around it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.context import FlowRunContext

from flows.config import SEVERITY_ORDER
from flows.records.history import PreviousRun, previous_run
from flows.records.markdown import clean, code_span, escape_inline, fenced
from flows.results import RunContext, StageResult, StageStatus

STATUS_ICONS = {"passed": "✅", "cached": "♻️", "failed": "❌", "skipped": "⏭️", "cancelled": "🚫"}
# Worst first, as a person reads a scan result.
SEVERITIES = tuple(sorted(SEVERITY_ORDER, key=lambda s: SEVERITY_ORDER[s], reverse=True))
DEPLOY_URLS = {"staging_url": "staging", "production_url": "production"}
# Data keys with a section of their own; any other key is listed as it is.
_SHOWN = {"images", "attestations", *DEPLOY_URLS}
# Only a plain http(s) URL becomes a link: anything else could break out of the markdown.
_LINKABLE = re.compile(r"https?://[^\s<>()\[\]`]+")


def summary_key(pipeline: str) -> str:
    """Artifact key of a pipeline's summary table (the CLI reads it back by this key)."""
    return f"{pipeline}-summary"


def report_key(pipeline: str) -> str:
    """Artifact key of a pipeline's markdown report."""
    return f"{pipeline}-report"


def stage_rows(stages: list[StageResult]) -> list[dict[str, Any]]:
    return [
        {
            "stage": s.name,
            "status": s.status.value,
            "seconds": round(s.seconds, 2),
            "detail": clean(s.detail or "")[:300],
            "cached_from": s.cached_from or "",
        }
        for s in stages
    ]


def _link(url: str) -> str:
    url = clean(url)
    return f"[{escape_inline(url)}]({url})" if _LINKABLE.fullmatch(url) else code_span(url)


def _stage(stages: list[StageResult], name: str) -> StageResult | None:
    return next((s for s in stages if s.name == name), None)


def _severity_counts(data: Mapping[str, Any]) -> dict[str, int] | None:
    """The scan's counts by severity; None when the scan produced none (it did not finish)."""
    counts = data.get("counts")
    if isinstance(counts, Mapping):
        return {str(k): v for k, v in counts.items() if isinstance(v, int)}
    findings = data.get("findings")
    if isinstance(findings, list):
        tally = dict.fromkeys(SEVERITIES, 0)
        for finding in findings:
            severity = str(finding.get("severity", "")) if isinstance(finding, Mapping) else ""
            if severity:
                tally[severity] = tally.get(severity, 0) + 1
        return tally
    return None


def scan_lines(stages: list[StageResult]) -> list[str]:
    """Scan findings by severity, worst first (zeros included), or why there are no counts."""
    scan = _stage(stages, "scan")
    if scan is None:
        return []
    head = "**Scan findings**:"
    if scan.status == StageStatus.SKIPPED:
        return [f"{head} not run: {escape_inline(scan.detail) or 'skipped'}"]
    counts = _severity_counts(scan.data)
    if counts is None:
        # Snyk did not answer (timeout, refused token) or the stage was cancelled: no counts
        # is not the same as no findings.
        why = escape_inline(scan.detail) or scan.status.value
        return [f"{head} unknown, the scan did not complete: {why}"]
    parts = [f"{severity} {counts.get(severity, 0)}" for severity in SEVERITIES]
    parts += [
        f"{escape_inline(severity)} {n}"
        for severity, n in counts.items()
        if severity not in SEVERITIES
    ]
    line = f"{head} {', '.join(parts)}"
    fail_on = scan.data.get("fail_on")
    if fail_on:
        line += f" (fails at {escape_inline(str(fail_on))} or worse)"
    return [line]


def image_lines(stages: list[StageResult], data: Mapping[str, Any]) -> list[str]:
    """One line per image: pinned by digest once pushed, else the local build and its id."""
    shown: dict[str, str] = {}
    build = _stage(stages, "build")
    built = build.data.get("images") if build is not None else None
    if isinstance(built, Mapping):
        for name, entry in built.items():
            if isinstance(entry, Mapping) and entry.get("ref"):
                # A local image id, not a registry digest: nothing was pushed (yet).
                image_id = f", image id {code_span(str(entry['id']))}" if entry.get("id") else ""
                shown[str(name)] = f"{code_span(str(entry['ref']))} (built, not pushed{image_id})"
    push = _stage(stages, "push")
    pushed = push.data.get("images") if push is not None else None
    if isinstance(pushed, Mapping):
        for name, entry in pushed.items():
            if isinstance(entry, Mapping) and (entry.get("pinned") or entry.get("digest")):
                shown[str(name)] = code_span(str(entry.get("pinned") or entry["digest"]))
    # The pipeline's own record (merge: what was deployed; release: the candidate's digests).
    recorded = data.get("images")
    if isinstance(recorded, Mapping):
        for name, ref in recorded.items():
            if isinstance(ref, str) and ref:
                shown[str(name)] = code_span(ref)
    return [f"- {code_span(name)} → {ref}" for name, ref in sorted(shown.items())]


def attestation_lines(data: Mapping[str, Any]) -> list[str]:
    """Where each image's SBOM and signed provenance are: cosign's references, one per line."""
    attested = data.get("attestations")
    if not isinstance(attested, Mapping):
        return []
    lines = []
    labels = (("sbom", "SBOM"), ("provenance", "signed provenance"))
    for name, refs in sorted(attested.items()):
        if isinstance(refs, Mapping):
            lines += [
                f"- {code_span(str(name))} {label}: {code_span(str(refs[key]))}"
                for key, label in labels
                if refs.get(key)
            ]
    return lines


def url_lines(data: Mapping[str, Any]) -> list[str]:
    return [
        f"- {environment}: {_link(str(data[key]))}"
        for key, environment in DEPLOY_URLS.items()
        if data.get(key)
    ]


def previous_line(previous: PreviousRun) -> str:
    name = escape_inline(previous.name)
    url = previous.url
    shown = f"[{name}]({url})" if url and _LINKABLE.fullmatch(url) else name
    subject, state = escape_inline(previous.subject), escape_inline(previous.state)
    return f"Previous run of {subject}: {shown} ({state})"


def render_markdown(
    pipeline: str,
    stages: list[StageResult],
    seconds: float,
    data: Mapping[str, Any],
    previous: PreviousRun | None = None,
) -> str:
    """The report: stages, scan findings, images, attestations, deploy URLs, then the rest."""
    lines = [f"## {pipeline} pipeline: {seconds:.1f} s", ""]
    if previous is not None:
        lines += [previous_line(previous), ""]
    lines += ["| stage | status | s | detail |", "|---|---|---|---|"]
    for s in stages:
        icon = STATUS_ICONS.get(s.status.value, "")
        name, detail = escape_inline(s.name), escape_inline(s.detail or "")
        lines.append(f"| {name} | {icon} {s.status.value} | {s.seconds:.1f} | {detail} |")
    scan = scan_lines(stages)
    if scan:
        lines += ["", *scan]
    images = image_lines(stages, data)
    if images:
        lines += ["", "### Images", *images]
    attestations = attestation_lines(data)
    if attestations:
        lines += ["", "### Attestations", *attestations]
    urls = url_lines(data)
    if urls:
        lines += ["", "### Deployed", *urls]
    for key, value in data.items():
        if key not in _SHOWN:
            lines += ["", f"**{escape_inline(str(key))}**: {code_span(str(value))}"]
    failed = [s for s in stages if s.status == StageStatus.FAILED and s.tail]
    for s in failed:
        # Redacted whole before it is cut, so no secret is left half visible at the cut.
        lines += ["", f"### {escape_inline(s.name)}: last lines", *fenced(clean(s.tail)[-3000:])]
    return "\n".join(lines)


async def publish_summary(
    pipeline: str,
    stages: list[StageResult],
    seconds: float,
    data: dict[str, Any],
    context: RunContext | None = None,
) -> None:
    """Write the run's summary table and report; ``context`` finds the previous run to link."""
    if FlowRunContext.get() is None:
        return
    await acreate_table_artifact(
        key=summary_key(pipeline),
        table=stage_rows(stages),
        description=f"{pipeline} pipeline stages",
    )
    previous = await previous_run(context) if context is not None else None
    await acreate_markdown_artifact(
        key=report_key(pipeline),
        markdown=render_markdown(pipeline, stages, seconds, data, previous),
        description=f"{pipeline} pipeline report",
    )
