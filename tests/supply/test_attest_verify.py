"""SBOM and signed provenance attached to real pushed digests, and each way verification fails.

One small image is built once for the module: busybox, Debian's package record of the
busybox-static it is made of, and one real Python distribution's metadata, so syft has OS and
language packages to find. Other digests are variants of its manifest (an annotation more),
stored in the same real registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib.metadata import distribution
from pathlib import Path

import docker
import pytest

from bench.supply import (
    BENCH_BUILDER,
    BENCH_COMMIT,
    BENCH_REPOSITORY,
    BENCH_SOURCE,
    PHASES,
    measure_supply,
)
from clients.oci_artifacts import (
    ATTESTATION_SUFFIX,
    DSSE_ENVELOPE,
    OCI_MANIFEST,
    PREDICATE_TYPE_ANNOTATION,
    SBOM_SUFFIX,
    SIGNATURE_ANNOTATION,
    Layer,
    artifact_tag,
    attach,
)
from clients.registry import RegistryClient
from flows.supply.attest import attest_image
from flows.supply.dsse import Envelope
from flows.supply.keys import SigningKey, TrustedKeys, trust
from flows.supply.provenance import (
    SLSA_PROVENANCE_V1,
    BuildFacts,
    build_statement,
    statement_bytes,
)
from flows.supply.sbom import SBOM_MEDIA_TYPE, parse_sbom, sbom_packages, sbom_subject_digest
from flows.supply.verify import Expected, ProvenanceRefused, Verification, verify_release
from tests.plugins.stack import GANTRY

pytestmark = [pytest.mark.engine, pytest.mark.slow]

REPOSITORY = "acme-supply/api"
REPO_NAME = "acme/supply"
REPO_ID = 4242
COMMIT = "c0ffee" + "0" * 34
PYTHON_DIST = "httpx"  # a dependency of Gantry: its metadata is at hand


@dataclass(frozen=True)
class Pushed:
    registry: RegistryClient
    image: str
    digest: str
    key: SigningKey

    def facts(self, digest: str | None = None, **changes: object) -> BuildFacts:
        facts = BuildFacts(
            image=self.image,
            digest=digest or self.digest,
            repository=REPO_NAME,
            repository_id=REPO_ID,
            commit=COMMIT,
            flow_run_id="0d5f3c9e-0000-4000-8000-000000000001",
            flow_run_url="http://127.0.0.1:4200/runs/flow-run/0d5f3c9e",
            scan_verdict="passed",
            scan_counts={"high": 0},
        )
        return replace(facts, **changes)  # type: ignore[arg-type]

    def variant(self, label: str) -> str:
        """Another digest: the image's manifest with one annotation more."""
        manifest = json.loads(self.registry.get_manifest(REPOSITORY, self.digest).content)
        manifest.setdefault("annotations", {})["test.variant"] = label
        content = json.dumps(manifest).encode()
        return self.registry.put_manifest(REPOSITORY, label, content, manifest["mediaType"])

    def verify(
        self,
        digest: str | None = None,
        expected: Expected | None = None,
        trusted: TrustedKeys | None = None,
        waive_scan: bool = False,
        allow_unscanned: bool = False,
    ) -> Verification:
        return verify_release(
            self.image,
            digest or self.digest,
            expected or Expected(commit=COMMIT, repository=REPO_NAME, repository_id=REPO_ID),
            registry=self.registry,
            trusted=trusted or TrustedKeys.of(self.key.public_key),
            waive_scan=waive_scan,
            allow_unscanned=allow_unscanned,
        )


def _context(folder: Path) -> Path:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed (run `make system-packages`)")
    shutil.copy2(busybox, folder / "busybox")
    records = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    stanza = next(r for r in records if r.startswith("Package: busybox-static\n"))
    (folder / "status").write_text(stanza.strip() + "\n\n")
    shutil.copy2("/etc/os-release", folder / "os-release")
    site = Path(str(distribution(PYTHON_DIST).locate_file("")))
    shutil.copytree(next(site.glob(f"{PYTHON_DIST}-*.dist-info")), folder / "dist-info")
    (folder / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        "COPY os-release /etc/os-release\n"
        "COPY status /var/lib/dpkg/status\n"
        f"COPY dist-info /usr/lib/python3/dist-packages/{PYTHON_DIST}.dist-info\n"
    )
    return folder


@pytest.fixture(scope="module")
def pushed(
    registry: str, docker_api: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pushed]:
    context = _context(tmp_path_factory.mktemp("supply-image"))
    image = f"{registry}/{REPOSITORY}"
    docker_api.images.build(path=str(context), tag=f"{image}:built", rm=True, forcerm=True)
    for item in docker_api.api.push(image, tag="built", stream=True, decode=True):
        assert "error" not in item, item
    client = RegistryClient(registry)
    digest = client.manifest_digest(REPOSITORY, "built")
    key = SigningKey.generate()
    pushed = Pushed(client, image, digest, key)
    attest_image(pushed.facts(), client, key=key, builder_id="urn:gantry:worker:test")
    yield pushed


def test_the_sbom_lists_the_images_os_and_python_packages(pushed: Pushed) -> None:
    manifest = pushed.registry.get_manifest(REPOSITORY, artifact_tag(pushed.digest, SBOM_SUFFIX))
    layer = json.loads(manifest.content)["layers"][0]
    assert layer["mediaType"] == SBOM_MEDIA_TYPE
    document = parse_sbom(pushed.registry.get_blob(REPOSITORY, layer["digest"]))
    assert sbom_subject_digest(document) == pushed.digest
    found = {(p.name, p.type) for p in sbom_packages(document)}
    assert ("busybox-static", "deb") in found
    assert (PYTHON_DIST, "python") in found


def test_the_provenance_is_attached_the_cosign_way_and_verifies(pushed: Pushed) -> None:
    tag = artifact_tag(pushed.digest, ATTESTATION_SUFFIX)
    manifest = pushed.registry.get_manifest(REPOSITORY, tag)
    document = json.loads(manifest.content)
    assert manifest.media_type == OCI_MANIFEST == document["mediaType"]
    layer = document["layers"][0]
    assert layer["mediaType"] == DSSE_ENVELOPE
    assert layer["annotations"] == {
        SIGNATURE_ANNOTATION: "",
        PREDICATE_TYPE_ANNOTATION: SLSA_PROVENANCE_V1,
    }
    result = pushed.verify()
    assert result.ok, result.checks
    assert [c.name for c in result.checks] == [
        "provenance",
        "signature",
        "subject",
        "repository",
        "commit",
        "scan",
        "sbom",
    ]
    assert result.provenance is not None
    assert result.provenance.builder_id == "urn:gantry:worker:test"
    assert result.provenance.flow_run_url == "http://127.0.0.1:4200/runs/flow-run/0d5f3c9e"
    result.raise_for_refusal()


def _refused_by(result: Verification) -> str:
    refusal = result.refusal()
    assert refusal is not None, result.checks
    with pytest.raises(ProvenanceRefused) as raised:
        result.raise_for_refusal()
    assert raised.value.check.name in str(raised.value)
    return refusal.check.name


def test_no_provenance_is_refused(pushed: Pushed) -> None:
    digest = pushed.variant("no-provenance")
    attach(
        pushed.registry,
        REPOSITORY,
        digest,
        SBOM_SUFFIX,
        Layer(b"{}", SBOM_MEDIA_TYPE),
        replace=True,
    )
    assert _refused_by(pushed.verify(digest)) == "provenance"


def test_provenance_signed_by_another_key_is_refused(pushed: Pushed) -> None:
    other = TrustedKeys.of(SigningKey.generate().public_key)
    assert _refused_by(pushed.verify(trusted=other)) == "signature"


def test_provenance_of_another_digest_is_refused(pushed: Pushed) -> None:
    # A valid, trusted provenance copied onto another digest's attestation tag.
    digest = pushed.variant("copied-provenance")
    original = pushed.registry.get_manifest(
        REPOSITORY, artifact_tag(pushed.digest, ATTESTATION_SUFFIX)
    )
    pushed.registry.put_manifest(
        REPOSITORY, artifact_tag(digest, ATTESTATION_SUFFIX), original.content, OCI_MANIFEST
    )
    result = pushed.verify(digest)
    assert _refused_by(result) == "subject"
    assert pushed.digest in result.checks[2].detail


def test_another_repository_is_refused_by_id_and_else_by_name(pushed: Pushed) -> None:
    by_id = Expected(commit=COMMIT, repository=REPO_NAME, repository_id=REPO_ID + 1)
    assert _refused_by(pushed.verify(expected=by_id)) == "repository"
    by_name = Expected(commit=COMMIT, repository="acme/other")
    assert _refused_by(pushed.verify(expected=by_name)) == "repository"
    # The id wins over a renamed repository's old name.
    renamed = Expected(commit=COMMIT, repository="acme/renamed", repository_id=REPO_ID)
    assert pushed.verify(expected=renamed).ok


def test_another_commit_is_refused(pushed: Pushed) -> None:
    expected = Expected(commit="f" * 40, repository_id=REPO_ID)
    assert _refused_by(pushed.verify(expected=expected)) == "commit"


def test_a_failed_scan_is_refused_unless_the_policy_waives_it(pushed: Pushed) -> None:
    digest = pushed.variant("failed-scan")
    attest_image(pushed.facts(digest, scan_verdict="failed"), pushed.registry, key=pushed.key)
    assert _refused_by(pushed.verify(digest)) == "scan"
    waived = pushed.verify(digest, waive_scan=True)
    assert waived.ok and "waived" in waived.checks[5].detail
    # Allowing unscanned images does not waive a failed scan.
    assert _refused_by(pushed.verify(digest, allow_unscanned=True)) == "scan"


def test_a_skipped_scan_is_not_a_passed_one(pushed: Pushed) -> None:
    digest = pushed.variant("skipped-scan")
    attest_image(pushed.facts(digest, scan_verdict="skipped"), pushed.registry, key=pushed.key)
    assert _refused_by(pushed.verify(digest)) == "scan"
    assert _refused_by(pushed.verify(digest, waive_scan=True)) == "scan"
    allowed = pushed.verify(digest, allow_unscanned=True)
    assert allowed.ok and "allow_unscanned" in allowed.checks[5].detail


def test_no_sbom_is_refused(pushed: Pushed) -> None:
    digest = pushed.variant("no-sbom")
    statement = build_statement(pushed.facts(digest), "urn:test", None, SBOM_MEDIA_TYPE)
    envelope = Envelope.sign(statement_bytes(statement), pushed.key)
    attach(
        pushed.registry,
        REPOSITORY,
        digest,
        ATTESTATION_SUFFIX,
        Layer(envelope.to_json(), DSSE_ENVELOPE, {PREDICATE_TYPE_ANNOTATION: SLSA_PROVENANCE_V1}),
    )
    assert _refused_by(pushed.verify(digest)) == "sbom"


def _gantry(pushed: Pushed, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    trusted = tmp_path / "trusted"
    trust(pushed.key.public_key, trusted)
    env = {**os.environ, "GANTRY_HOME": str(tmp_path), "GANTRY_SUPPLY_TRUSTED_KEYS": str(trusted)}
    for name in ("GANTRY_REGISTRY_USERNAME", "GANTRY_REGISTRY_PASSWORD"):
        env.pop(name, None)
    return subprocess.run(
        [GANTRY, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_gantry_verify_prints_each_check_and_exits_1_on_a_refusal(
    pushed: Pushed, tmp_path: Path
) -> None:
    reference = f"{pushed.image}@{pushed.digest}"
    good = _gantry(
        pushed, tmp_path, "verify", reference, "--repo-id", str(REPO_ID), "--sha", COMMIT
    )
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:7]] == [
        ["ok", name]
        for name in ("provenance", "signature", "subject", "repository", "commit", "scan", "sbom")
    ]
    assert lines[-1] == f"verified {reference}"
    # The signature line names the signing key by its key id's first 16 hex digits: enough to
    # tell which trusted `<keyid>.pub` signed it during a rotation.
    assert f"signed by trusted key {pushed.key.keyid[:16]}," in lines[1]
    assert [p.name for p in (tmp_path / "trusted").iterdir()] == [f"{pushed.key.keyid}.pub"]
    bad = _gantry(pushed, tmp_path, "verify", reference, "--sha", "f" * 40, "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    payload = json.loads(bad.stdout)
    assert payload["refused_by"] == "commit" and payload["digest"] == pushed.digest
    usage = _gantry(pushed, tmp_path, "verify", f"{pushed.image}:built")
    assert usage.returncode == 2


def test_gantry_sbom_lists_name_version_and_type(pushed: Pushed, tmp_path: Path) -> None:
    reference = f"{pushed.image}@{pushed.digest}"
    plain = _gantry(pushed, tmp_path, "sbom", reference)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert reference in plain.stdout.splitlines()[0]
    rows = {tuple(line.split()) for line in plain.stdout.splitlines()[1:]}
    assert any(row[0] == "busybox-static" and row[-1] == "deb" for row in rows)
    assert any(row[0] == PYTHON_DIST and row[-1] == "python" for row in rows)
    as_json = json.loads(_gantry(pushed, tmp_path, "sbom", reference, "--json").stdout)
    assert as_json["describes"] == pushed.digest
    version = distribution(PYTHON_DIST).version
    assert {"name": PYTHON_DIST, "version": version, "type": "python"} in as_json["packages"]


def test_the_bench_pushes_an_image_then_times_each_supply_phase_on_fresh_digests(
    pushed: Pushed, container_engine: str, registry: str
) -> None:
    cost = measure_supply(container_engine, registry, rounds=2, key=pushed.key)
    assert cost["rounds"] == 2 and cost["source"]
    phases = cost["per_image"]
    assert set(phases) == set(PHASES)
    assert all(seconds > 0 for seconds in phases.values()), phases
    # The total is the median of per-round sums: at least each phase's share of it.
    assert cost["total"] >= max(phases.values())
    assert cost["push"] > 0 and cost["over_push"] == cost["total"] / cost["push"]
    image, pushed_digest = cost["image"].split("@")
    assert image == f"{registry}/{BENCH_REPOSITORY}"
    digests = cost["digests"]
    assert len(set(digests)) == 2 and pushed_digest not in digests
    for digest in digests:
        # What was timed was real: each digest carries its SBOM and a provenance that verifies.
        result = verify_release(
            image,
            digest,
            Expected(commit=BENCH_COMMIT, repository=BENCH_SOURCE),
            registry=pushed.registry,
            trusted=TrustedKeys.of(pushed.key.public_key),
        )
        assert result.ok, result.checks
        assert result.provenance is not None
        assert result.provenance.builder_id == BENCH_BUILDER
