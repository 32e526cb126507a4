"""The in-toto Statement (v1) with a SLSA provenance (v1) predicate for one pushed digest.

What the release checks lives where SLSA puts it: the source (repository full name, GitHub's
numeric id, commit) in ``buildDefinition.externalParameters`` and as the git dependency, the
merge flow run and the scan verdict in ``internalParameters`` (the builder's own facts), the
worker's identity as ``runDetails.builder.id``, the flow run's page as the invocation id, and
the SBOM's digest as a byproduct, so the signature covers the SBOM too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:gantry:buildtype:merge-pipeline:v1"
SCAN_PASSED = "passed"
SCAN_SKIPPED = "skipped"  # the merge ran no scan: none configured


class StatementError(ValueError):
    """A payload that is not the provenance statement Gantry writes."""


@dataclass(frozen=True)
class BuildFacts:
    """What the merge pipeline knows about one pushed image, as it signs it."""

    image: str  # registry/repository, no tag: "127.0.0.1:5000/acme-api/api"
    digest: str  # "sha256:<hex>"
    repository: str  # the source repository's full name, "acme/api" (or a local path)
    repository_id: int | None  # GitHub's numeric id; None for a local repository
    commit: str
    flow_run_id: str
    flow_run_url: str | None
    scan_verdict: str  # "passed", "failed" or "skipped" (not configured)
    scan_counts: dict[str, int] = field(default_factory=dict)
    started_on: datetime | None = None


@dataclass(frozen=True)
class Provenance:
    """The fields verification reads from a statement."""

    subjects: tuple[tuple[str, str], ...]  # (name, "sha256:<hex>")
    builder_id: str
    repository: str
    repository_id: int | None
    commit: str
    flow_run_id: str
    flow_run_url: str | None
    scan_verdict: str
    sbom_digest: str | None


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_statement(
    facts: BuildFacts, builder_id: str, sbom_digest: str | None, sbom_media_type: str
) -> dict[str, Any]:
    hex_digest = facts.digest.removeprefix("sha256:")
    metadata: dict[str, Any] = {
        "invocationId": facts.flow_run_url or f"urn:prefect:flow-run:{facts.flow_run_id}",
        "finishedOn": _timestamp(datetime.now(UTC)),
    }
    if facts.started_on is not None:
        metadata["startedOn"] = _timestamp(facts.started_on)
    byproducts = (
        [
            {
                "name": "sbom",
                "digest": {"sha256": sbom_digest.removeprefix("sha256:")},
                "mediaType": sbom_media_type,
            }
        ]
        if sbom_digest
        else []
    )
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": facts.image, "digest": {"sha256": hex_digest}}],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": {
                        "repository": facts.repository,
                        "repositoryId": facts.repository_id,
                        "commit": facts.commit,
                    }
                },
                "internalParameters": {
                    "flowRunId": facts.flow_run_id,
                    "flowRunUrl": facts.flow_run_url,
                    "scan": {"verdict": facts.scan_verdict, "counts": dict(facts.scan_counts)},
                },
                "resolvedDependencies": [
                    {"uri": f"git+{facts.repository}", "digest": {"gitCommit": facts.commit}}
                ],
            },
            "runDetails": {
                "builder": {"id": builder_id},
                "metadata": metadata,
                "byproducts": byproducts,
            },
        },
    }


def statement_bytes(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, separators=(",", ":"), sort_keys=True).encode()


def read_statement(payload: bytes) -> Provenance:
    """The fields of a signed statement; call only on a payload whose signature verified."""
    try:
        statement = json.loads(payload)
        if statement["_type"] != STATEMENT_TYPE:
            raise StatementError(f"statement type {statement['_type']!r}")
        if statement["predicateType"] != SLSA_PROVENANCE_V1:
            raise StatementError(f"predicate type {statement['predicateType']!r}")
        subjects = tuple(
            (str(s["name"]), "sha256:" + str(s["digest"]["sha256"]))
            for s in statement["subject"]
            if "sha256" in s.get("digest", {})
        )
        predicate = statement["predicate"]
        definition = predicate["buildDefinition"]
        source = definition["externalParameters"]["source"]
        internal = definition["internalParameters"]
        repository_id = source.get("repositoryId")
        sbom = next(
            (b for b in predicate["runDetails"].get("byproducts") or [] if b.get("name") == "sbom"),
            None,
        )
        return Provenance(
            subjects=subjects,
            builder_id=str(predicate["runDetails"]["builder"]["id"]),
            repository=str(source["repository"]),
            repository_id=int(repository_id) if repository_id is not None else None,
            commit=str(source["commit"]),
            flow_run_id=str(internal.get("flowRunId") or ""),
            flow_run_url=internal.get("flowRunUrl"),
            scan_verdict=str(internal["scan"]["verdict"]),
            sbom_digest="sha256:" + str(sbom["digest"]["sha256"]) if sbom else None,
        )
    except StatementError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StatementError(
            f"not a Gantry provenance statement: {type(exc).__name__}: {exc}"
        ) from None
