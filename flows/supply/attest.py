"""After a push: the image's SBOM and its signed provenance, attached to its digest.

``attest_image`` is the one call the merge pipeline makes per pushed image. The SBOM goes
first, so the signed provenance can name the SBOM's digest (the SBOM itself is unsigned, as
cosign attaches SBOMs, but the provenance vouches for it).
"""

from __future__ import annotations

from dataclasses import dataclass

from clients.oci_artifacts import (
    ATTESTATION_SUFFIX,
    DSSE_ENVELOPE,
    PREDICATE_TYPE_ANNOTATION,
    SBOM_SUFFIX,
    Layer,
    attach,
)
from clients.registry import RegistryClient, RegistryClientError, sha256_digest
from flows.supply.dsse import Envelope
from flows.supply.keys import SigningKey, SupplySettings, load_signing_key
from flows.supply.provenance import (
    SLSA_PROVENANCE_V1,
    BuildFacts,
    build_statement,
    statement_bytes,
)
from flows.supply.sbom import SBOM_MEDIA_TYPE, SbomError, generate_sbom


class AttestError(RuntimeError):
    """The SBOM or the provenance could not be made or attached."""


@dataclass(frozen=True)
class Attestation:
    """What was attached to one image digest."""

    image: str
    digest: str
    sbom_digest: str
    sbom_manifest: str
    provenance_manifest: str
    keyid: str


def repository_of(image: str, registry: RegistryClient) -> str:
    """The repository path of ``image`` (``HOST/PATH``) in ``registry``."""
    prefix = f"{registry.address}/"
    if not image.startswith(prefix):
        raise AttestError(f"{image} is not in the registry {registry.address}")
    return image.removeprefix(prefix)


def attest_image(
    facts: BuildFacts,
    registry: RegistryClient,
    *,
    key: SigningKey | None = None,
    builder_id: str | None = None,
    sbom: bytes | None = None,
) -> Attestation:
    """Generate (unless given) and attach the SBOM, then sign and attach the provenance."""
    settings = SupplySettings()
    key = key or load_signing_key(settings)
    repository = repository_of(facts.image, registry)
    try:
        document = sbom if sbom is not None else generate_sbom(registry, repository, facts.digest)
        sbom_manifest = attach(
            registry,
            repository,
            facts.digest,
            SBOM_SUFFIX,
            Layer(document, SBOM_MEDIA_TYPE),
            replace=True,
        )
        statement = build_statement(
            facts, builder_id or settings.builder(), sha256_digest(document), SBOM_MEDIA_TYPE
        )
        envelope = Envelope.sign(statement_bytes(statement), key)
        provenance_manifest = attach(
            registry,
            repository,
            facts.digest,
            ATTESTATION_SUFFIX,
            Layer(
                envelope.to_json(),
                DSSE_ENVELOPE,
                {PREDICATE_TYPE_ANNOTATION: SLSA_PROVENANCE_V1},
            ),
        )
    except (SbomError, RegistryClientError) as exc:
        raise AttestError(f"{facts.image}@{facts.digest}: {exc}") from exc
    return Attestation(
        image=facts.image,
        digest=facts.digest,
        sbom_digest=sha256_digest(document),
        sbom_manifest=sbom_manifest,
        provenance_manifest=provenance_manifest,
        keyid=key.keyid,
    )
