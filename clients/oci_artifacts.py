"""Artifacts attached to an image digest the way cosign attaches them: by tag, in the registry.

cosign keeps what it attaches to ``NAME@sha256:HEX`` in the same repository under the tag
``sha256-HEX.SUFFIX`` (``.sbom`` for an SBOM, ``.att`` for attestations): an OCI image manifest
whose layers are the artifacts, each with its media type and annotations, and a minimal image
config that lists the layers' digests. Writing the same layout means ``cosign download sbom``
and ``cosign verify-attestation --key`` read what Gantry wrote, and the other way round.
Registries without the OCI 1.1 referrers API (most of them today) serve it as well.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from clients.registry import ManifestNotFound, RegistryClient, RegistryClientError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
# cosign puts a layer's base64 signature here; an attestation is signed inside its envelope,
# so cosign writes the key with an empty value, and so do we.
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_TYPE_ANNOTATION = "predicateType"
SBOM_SUFFIX = "sbom"
ATTESTATION_SUFFIX = "att"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ArtifactError(RegistryClientError):
    """An attached artifact is missing or not in the shape cosign writes."""


@dataclass(frozen=True)
class Layer:
    """One attached artifact: its bytes as stored, media type and annotations."""

    content: bytes
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)
    digest: str = ""


def artifact_tag(subject_digest: str, suffix: str) -> str:
    """cosign's tag for what is attached to ``subject_digest``: ``sha256-HEX.SUFFIX``."""
    if not DIGEST.match(subject_digest):
        raise ArtifactError(f"not a sha256 digest: {subject_digest!r}")
    return f"{subject_digest.replace(':', '-')}.{suffix}"


def _config(layer_digests: list[str]) -> bytes:
    # The image config cosign's (empty) image carries: no platform, the layers as diff ids.
    config = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layer_digests],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
        "config": {},
    }
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def _descriptor(media_type: str, content: bytes, digest: str) -> dict[str, Any]:
    return {"mediaType": media_type, "size": len(content), "digest": digest}


def attached_layers(
    client: RegistryClient, repository: str, subject_digest: str, suffix: str
) -> list[Layer]:
    """Every layer attached to ``subject_digest`` under ``suffix``; [] when none is."""
    tag = artifact_tag(subject_digest, suffix)
    try:
        manifest = client.get_manifest(repository, tag)
    except ManifestNotFound:
        return []
    try:
        document = json.loads(manifest.content)
        entries = document["layers"]
        if not isinstance(entries, list):
            raise TypeError("layers is not a list")
        descriptors = [
            (str(entry["digest"]), str(entry["mediaType"]), dict(entry.get("annotations") or {}))
            for entry in entries
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{repository}:{tag} is not an OCI image manifest: {exc}") from exc
    return [
        Layer(
            content=client.get_blob(repository, digest),
            media_type=media_type,
            annotations={str(k): str(v) for k, v in annotations.items()},
            digest=digest,
        )
        for digest, media_type, annotations in descriptors
    ]


def attach(
    client: RegistryClient,
    repository: str,
    subject_digest: str,
    suffix: str,
    layer: Layer,
    *,
    replace: bool = False,
) -> str:
    """Attach ``layer`` to ``subject_digest``; returns the digest of the manifest written.

    As cosign does, a new attestation is added next to those already attached (each verifier
    picks the ones it trusts) unless the same bytes are there already; ``replace`` keeps only
    the new layer (an SBOM: there is one per image).
    """
    tag = artifact_tag(subject_digest, suffix)
    kept = [] if replace else attached_layers(client, repository, subject_digest, suffix)
    annotations = {SIGNATURE_ANNOTATION: "", **layer.annotations}
    digest = client.put_blob(repository, layer.content)
    new = Layer(layer.content, layer.media_type, annotations, digest)
    layers = [old for old in kept if old.digest != digest] + [new]
    config = _config([entry.digest for entry in layers])
    config_digest = client.put_blob(repository, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config, config_digest),
        "layers": [
            {
                **_descriptor(entry.media_type, entry.content, entry.digest),
                "annotations": entry.annotations,
            }
            for entry in layers
        ],
    }
    content = json.dumps(manifest, separators=(",", ":")).encode()
    return client.put_manifest(repository, tag, content, OCI_MANIFEST)


def split_reference(reference: str) -> tuple[str, str, str]:
    """``HOST[:PORT]/PATH@sha256:HEX`` as (registry address, repository path, digest)."""
    name, at, digest = reference.partition("@")
    registry, slash, repository = name.partition("/")
    if not at or not DIGEST.match(digest) or not slash or not repository:
        raise ArtifactError(
            f"not an image reference by digest (HOST/NAME@sha256:...): {reference!r}"
        )
    if ":" in repository.rsplit("/", 1)[-1]:
        raise ArtifactError(f"name an image by digest only, without a tag: {reference!r}")
    return registry, repository, digest
