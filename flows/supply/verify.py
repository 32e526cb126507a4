"""Before a release: what the registry holds for a candidate digest, checked one claim at a time.

``verify_release`` fetches the provenance and the SBOM attached to the digest and checks, in
order of trust: that provenance is attached, that a trusted key signed it (nothing in the
payload is read before that), that its subject is this digest, that it was built from the
expected repository and commit, that the scan passed or was not run (a failed one only when
the caller's policy waives it), and that the SBOM is attached, describes this digest and is the
one the provenance signed.
Every check is reported; a refusal names the first that failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from clients.oci_artifacts import (
    ATTESTATION_SUFFIX,
    DSSE_ENVELOPE,
    PREDICATE_TYPE_ANNOTATION,
    SBOM_SUFFIX,
    Layer,
    attached_layers,
)
from clients.registry import RegistryClient, RegistryClientError
from flows.supply.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, EnvelopeError
from flows.supply.keys import TrustedKeys
from flows.supply.provenance import (
    SCAN_PASSED,
    SCAN_SKIPPED,
    SLSA_PROVENANCE_V1,
    Provenance,
    StatementError,
    read_statement,
)
from flows.supply.sbom import SbomError, parse_sbom, sbom_subject_digest

CHECKS = ("provenance", "signature", "subject", "repository", "commit", "scan", "sbom")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Expected:
    """What the release expects: the repository by GitHub id when known, else by full name."""

    commit: str | None = None
    repository: str | None = None
    repository_id: int | None = None


class ProvenanceRefused(RuntimeError):
    """The candidate digest failed a supply-chain check; ``check`` is the first that failed."""

    def __init__(self, reference: str, check: Check) -> None:
        super().__init__(f"{reference} refused: {check.name}: {check.detail}")
        self.check = check


@dataclass(frozen=True)
class Verification:
    image: str
    digest: str
    checks: tuple[Check, ...]
    provenance: Provenance | None = None

    @property
    def reference(self) -> str:
        return f"{self.image}@{self.digest}"

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((check for check in self.checks if not check.ok), None)

    def refusal(self) -> ProvenanceRefused | None:
        failed = self.first_failure
        return ProvenanceRefused(self.reference, failed) if failed else None

    def raise_for_refusal(self) -> None:
        refused = self.refusal()
        if refused is not None:
            raise refused


def _is_provenance(layer: Layer) -> bool:
    return (
        layer.media_type == DSSE_ENVELOPE
        and layer.annotations.get(PREDICATE_TYPE_ANNOTATION, SLSA_PROVENANCE_V1)
        == SLSA_PROVENANCE_V1
    )


def _signed_statements(
    layers: list[Layer], trusted: TrustedKeys
) -> tuple[list[tuple[str, bytes]], int]:
    """(key id, payload) of every envelope a trusted key signed; and how many envelopes."""
    envelopes: list[Envelope] = []
    for layer in layers:
        try:
            envelopes.append(Envelope.from_json(layer.content))
        except EnvelopeError:
            continue
    signed: list[tuple[str, bytes]] = []
    for envelope in envelopes:
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
            continue
        keyid = envelope.verified_by(trusted)
        if keyid is not None:
            signed.append((keyid, envelope.payload))
    return signed, len(envelopes)


def _claims(
    provenance: Provenance,
    digest: str,
    expected: Expected,
    waive_scan: bool,
    allow_unscanned: bool,
) -> list[Check]:
    subjects = ", ".join(f"{name}@{d}" for name, d in provenance.subjects) or "none"
    checks = [
        Check(
            "subject",
            any(d == digest for _, d in provenance.subjects),
            f"provenance is about {subjects}",
        )
    ]
    recorded = provenance.repository + (
        f" (id {provenance.repository_id})" if provenance.repository_id is not None else ""
    )
    if expected.repository_id is not None:
        checks.append(
            Check(
                "repository",
                provenance.repository_id == expected.repository_id,
                f"built from {recorded}; expected id {expected.repository_id}",
            )
        )
    elif expected.repository is not None:
        checks.append(
            Check(
                "repository",
                provenance.repository == expected.repository,
                f"built from {recorded}; expected {expected.repository}",
            )
        )
    else:
        checks.append(Check("repository", True, f"built from {recorded}; none expected"))
    if expected.commit is not None:
        checks.append(
            Check(
                "commit",
                provenance.commit == expected.commit,
                f"built from {provenance.commit}; expected {expected.commit}",
            )
        )
    else:
        checks.append(Check("commit", True, f"built from {provenance.commit}; none expected"))
    # A skipped scan (none configured) is never taken for a passed one: it goes through only
    # where the policy says unscanned images may (a stack with no scanner, like the demo's),
    # and a failed one only where the policy waives failures.
    verdict = provenance.scan_verdict
    if verdict == SCAN_PASSED:
        checks.append(Check("scan", True, "scan passed"))
    elif verdict == SCAN_SKIPPED:
        allowed = ", allowed by the policy (allow_unscanned)" if allow_unscanned else ""
        checks.append(Check("scan", allow_unscanned, f"scan skipped: no scan examined it{allowed}"))
    else:
        waived = ", waived by the policy (waive_failed_scan)" if waive_scan else ""
        checks.append(Check("scan", waive_scan, f"scan {verdict}{waived}"))
    return checks


def _sbom_check(
    registry: RegistryClient, repository: str, digest: str, provenance: Provenance | None
) -> Check:
    try:
        layers = attached_layers(registry, repository, digest, SBOM_SUFFIX)
    except RegistryClientError as exc:
        return Check("sbom", False, f"cannot read the SBOM: {exc}")
    if not layers:
        return Check("sbom", False, "no SBOM attached")
    layer = layers[-1]
    try:
        described = sbom_subject_digest(parse_sbom(layer.content))
    except SbomError as exc:
        return Check("sbom", False, str(exc))
    if described != digest:
        return Check("sbom", False, f"the SBOM describes {described or 'no digest'}")
    if provenance is not None and provenance.sbom_digest not in (None, layer.digest):
        return Check(
            "sbom",
            False,
            f"the SBOM is {layer.digest}, the provenance signed {provenance.sbom_digest}",
        )
    return Check("sbom", True, f"SBOM {layer.digest} describes {digest}")


def _not_checked(names: tuple[str, ...], why: str) -> list[Check]:
    return [Check(name, False, f"not checked: {why}") for name in names]


def verify_release(
    image: str,
    digest: str,
    expected: Expected,
    *,
    registry: RegistryClient,
    trusted: TrustedKeys,
    waive_scan: bool = False,
    allow_unscanned: bool = False,
) -> Verification:
    """Every supply-chain check of ``image@digest`` (``image`` is ``HOST/PATH``)."""
    prefix = f"{registry.address}/"
    repository = image.removeprefix(prefix) if image.startswith(prefix) else image
    claims = ("subject", "repository", "commit", "scan")
    checks: list[Check] = []
    provenance: Provenance | None = None
    try:
        layers = [
            layer
            for layer in attached_layers(registry, repository, digest, ATTESTATION_SUFFIX)
            if _is_provenance(layer)
        ]
    except RegistryClientError as exc:
        layers = []
        checks.append(Check("provenance", False, f"cannot read the provenance: {exc}"))
    else:
        found = bool(layers)
        detail = f"{len(layers)} attached" if found else "no provenance attached"
        checks.append(Check("provenance", found, detail))
    if not layers:
        checks += _not_checked(("signature", *claims), "no provenance")
    else:
        signed, envelopes = _signed_statements(layers, trusted)
        if not signed:
            why = "no trusted keys configured" if not len(trusted) else "no trusted key"
            checks.append(Check("signature", False, f"{envelopes} envelope(s), signed by {why}"))
            checks += _not_checked(claims, "the signature is not trusted")
        else:
            best: tuple[str, Provenance | None, list[Check]] | None = None
            for keyid, payload in signed:
                candidate: tuple[str, Provenance | None, list[Check]]
                try:
                    statement = read_statement(payload)
                except StatementError as exc:
                    candidate = (keyid, None, [Check("subject", False, str(exc))])
                    candidate[2].extend(_not_checked(claims[1:], "unreadable statement"))
                else:
                    candidate = (
                        keyid,
                        statement,
                        _claims(statement, digest, expected, waive_scan, allow_unscanned),
                    )
                if best is None or (
                    all(c.ok for c in candidate[2]) and not all(c.ok for c in best[2])
                ):
                    best = candidate
            assert best is not None  # signed is not empty
            keyid, provenance, claim_checks = best
            builder = f", builder {provenance.builder_id}" if provenance else ""
            checks.append(Check("signature", True, f"signed by trusted key {keyid[:16]}{builder}"))
            checks += claim_checks
    checks.append(_sbom_check(registry, repository, digest, provenance))
    return Verification(image=image, digest=digest, checks=tuple(checks), provenance=provenance)
