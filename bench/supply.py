"""What the supply chain adds to the merge pipeline per pushed image: SBOM, signing, attaching.

Each round does, on one pushed digest, what ``flows.supply.attest.attest_image`` does, phase by
phase: syft's SBOM read from the registry, the provenance statement built and DSSE-signed, the
SBOM attached, the signed provenance attached. The phases are timed side by side in the same
rounds, and the image's own push in the same run is the reference they are set against.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker
from docker.errors import ImageNotFound

from clients.base_image import BASE_IMAGE
from clients.oci_artifacts import (
    ATTESTATION_SUFFIX,
    DSSE_ENVELOPE,
    PREDICATE_TYPE_ANNOTATION,
    SBOM_SUFFIX,
    Layer,
    attach,
)
from clients.registry import RegistryClient, sha256_digest
from flows.supply.dsse import Envelope
from flows.supply.keys import SigningKey
from flows.supply.provenance import (
    SLSA_PROVENANCE_V1,
    BuildFacts,
    build_statement,
    statement_bytes,
)
from flows.supply.sbom import SBOM_MEDIA_TYPE, generate_sbom

# syft takes seconds per image: a few rounds give a median without stretching `make bench`.
SUPPLY_ROUNDS = 3
MAX_SUPPLY_ROUNDS = 10
PHASES = ("sbom", "sign", "attach_sbom", "attach_provenance")
BENCH_REPOSITORY = "gantry-bench/supply"
BENCH_SOURCE = "bench/repo"
BENCH_COMMIT = "b" * 40
BENCH_BUILDER = "urn:gantry:worker:bench"
SMALL_IMAGE = "localhost/gantry-bench/small:1"


def bench_facts(image: str, digest: str) -> BuildFacts:
    """The build facts the bench signs: a fixed source, a fresh flow run id per round."""
    run = str(uuid.uuid4())
    return BuildFacts(
        image=image,
        digest=digest,
        repository=BENCH_SOURCE,
        repository_id=None,
        commit=BENCH_COMMIT,
        flow_run_id=run,
        flow_run_url=None,
        scan_verdict="passed",
    )


def fresh_digest(registry: RegistryClient, repository: str, digest: str, label: str) -> str:
    """Another digest of the same image (its manifest with one annotation more), pushed.

    Each merge attests a digest nothing is attached to yet; a fresh one per round keeps later
    rounds from reading and rewriting the attachments of earlier ones.
    """
    fetched = registry.get_manifest(repository, digest)
    manifest = json.loads(fetched.content)
    manifest.setdefault("annotations", {})["org.gantry.bench.round"] = label
    content = json.dumps(manifest).encode()
    # An OCI manifest may leave out its mediaType: the registry's Content-Type then says it.
    media_type = manifest.get("mediaType") or fetched.media_type
    return registry.put_manifest(repository, f"bench-{label}", content, media_type)


def supply_cost(
    registry: RegistryClient,
    image: str,
    digest: str,
    rounds: int = SUPPLY_ROUNDS,
    key: SigningKey | None = None,
) -> dict[str, Any]:
    """Median seconds of each supply phase per image, and of their sum, over ``rounds``.

    ``image@digest`` is a pushed image (``image`` is ``HOST/PATH`` in ``registry``); each round
    attests a fresh digest of it (see ``fresh_digest``), listed under ``digests``. The
    attachments are real: each of those digests carries its SBOM and a provenance signed by
    ``key`` (a throwaway key by default: the bench never touches the stack's signing key).
    """
    rounds = max(1, min(rounds, MAX_SUPPLY_ROUNDS))
    key = key or SigningKey.generate()
    repository = image.removeprefix(f"{registry.address}/")
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    totals: list[float] = []
    digests: list[str] = []
    for number in range(rounds):
        subject = fresh_digest(registry, repository, digest, f"{uuid.uuid4().hex[:8]}-{number}")
        digests.append(subject)
        took: dict[str, float] = {}
        started = time.perf_counter()
        document = generate_sbom(registry, repository, subject)
        took["sbom"] = time.perf_counter() - started

        started = time.perf_counter()
        statement = build_statement(
            bench_facts(image, subject), BENCH_BUILDER, sha256_digest(document), SBOM_MEDIA_TYPE
        )
        envelope = Envelope.sign(statement_bytes(statement), key)
        took["sign"] = time.perf_counter() - started

        started = time.perf_counter()
        attach(
            registry,
            repository,
            subject,
            SBOM_SUFFIX,
            Layer(document, SBOM_MEDIA_TYPE),
            replace=True,
        )
        took["attach_sbom"] = time.perf_counter() - started

        started = time.perf_counter()
        attach(
            registry,
            repository,
            subject,
            ATTESTATION_SUFFIX,
            Layer(
                envelope.to_json(),
                DSSE_ENVELOPE,
                {PREDICATE_TYPE_ANNOTATION: SLSA_PROVENANCE_V1},
            ),
        )
        took["attach_provenance"] = time.perf_counter() - started

        for phase, seconds in took.items():
            times[phase].append(seconds)
        totals.append(sum(took.values()))
    return {
        "image": f"{image}@{digest}",
        "rounds": rounds,
        "digests": digests,
        "per_image": {phase: statistics.median(values) for phase, values in times.items()},
        "total": statistics.median(totals),
    }


def _small_image(client: docker.DockerClient) -> str:
    """A 2 MB image of Debian's busybox-static, with its package record for syft to find."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox-static is not installed (run `make system-packages`)")
    records = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    stanza = next((r for r in records if r.startswith("Package: busybox-static\n")), "")
    with tempfile.TemporaryDirectory(prefix="gantry-bench-image-") as tmp:
        context = Path(tmp)
        shutil.copy2(busybox, context / "busybox")
        (context / "status").write_text(stanza.strip() + "\n\n")
        (context / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY status /var/lib/dpkg/status\n"
        )
        client.images.build(path=str(context), tag=SMALL_IMAGE, rm=True, forcerm=True)
    return SMALL_IMAGE


def source_image(client: docker.DockerClient) -> str:
    """The image to measure: the Python base the sample service builds on when the engine has
    it (a service-sized SBOM), else a small busybox image built offline."""
    try:
        client.images.get(BASE_IMAGE)
    except ImageNotFound:
        return _small_image(client)
    return BASE_IMAGE


def push_image(
    client: docker.DockerClient, source: str, registry: RegistryClient, tag: str = "bench"
) -> tuple[str, str, float]:
    """Push local image ``source`` into ``registry``: (image, digest, seconds the push took)."""
    image = f"{registry.address}/{BENCH_REPOSITORY}"
    client.images.get(source).tag(image, tag)
    started = time.perf_counter()
    for item in client.api.push(image, tag=tag, stream=True, decode=True):
        if "error" in item:
            raise RuntimeError(f"pushing {image}:{tag} failed: {item['error']}")
    seconds = time.perf_counter() - started
    return image, registry.manifest_digest(BENCH_REPOSITORY, tag), seconds


def measure_supply(
    docker_host: str,
    registry_address: str,
    rounds: int = SUPPLY_ROUNDS,
    key: SigningKey | None = None,
) -> dict[str, Any]:
    """Push one image to the stack's registry, then time its supply phases beside that push.

    ``docker_host`` is the engine's API (the stack's ``engine.docker_host``); the engine must
    reach ``registry_address`` (the stack's registry, which its engine trusts over HTTP).
    """
    client = docker.DockerClient(base_url=docker_host, timeout=300)
    try:
        registry = RegistryClient(registry_address)
        source = source_image(client)
        image, digest, push_seconds = push_image(client, source, registry)
    finally:
        client.close()
    cost = supply_cost(registry, image, digest, rounds, key)
    cost["source"] = source
    cost["push"] = push_seconds
    cost["over_push"] = cost["total"] / push_seconds if push_seconds > 0 else None
    return cost
