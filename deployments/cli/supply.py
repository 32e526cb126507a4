"""`gantry verify` and `gantry sbom`: what the registry holds for an image digest, for people.

Lines are printed plain (no table, no wrapping), so an image reference or a digest is never
broken and can be copied from the terminal. Registry credentials come from
``GANTRY_REGISTRY_USERNAME`` / ``GANTRY_REGISTRY_PASSWORD``; the trusted keys from
``GANTRY_SUPPLY_TRUSTED_KEYS`` (default: the state folder's ``provenance-trusted-keys``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # loaded by the commands that run, not by `gantry --help`
    from clients.registry import RegistryClient

Reference = Annotated[str, typer.Argument(help="The image by digest: HOST/NAME@sha256:...")]
JsonFlag = Annotated[bool, typer.Option("--json", help="One JSON object for scripts.")]


def _echo(line: str) -> None:
    typer.echo(line)


def _target(reference: str) -> tuple[RegistryClient, str, str]:
    from blocks.containers import registry_credentials_from_env
    from clients.oci_artifacts import ArtifactError, split_reference
    from clients.registry import RegistryClient

    try:
        address, repository, digest = split_reference(reference)
    except ArtifactError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    credentials = registry_credentials_from_env(address)
    client = RegistryClient(
        address,
        credentials.username if credentials is not None else None,
        credentials.password if credentials is not None else None,
    )
    return client, repository, digest


def verify(
    reference: Reference,
    repo_id: Annotated[
        int | None, typer.Option("--repo-id", help="Expected GitHub repository id.")
    ] = None,
    repo: Annotated[
        str | None, typer.Option("--repo", help="Expected repository full name (owner/name).")
    ] = None,
    sha: Annotated[str | None, typer.Option("--sha", help="Expected commit SHA.")] = None,
    allow_unscanned: Annotated[
        bool,
        typer.Option(
            "--allow-unscanned", help="Accept a skipped scan (as a policy with allow_unscanned)."
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check an image digest's signed provenance and SBOM; exit 1 when a check fails."""
    from flows.supply.keys import SupplyKeyError, TrustedKeys
    from flows.supply.verify import Expected, verify_release

    registry, repository, digest = _target(reference)
    try:
        trusted = TrustedKeys.configured()
    except SupplyKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    result = verify_release(
        f"{registry.address}/{repository}",
        digest,
        Expected(commit=sha, repository=repo, repository_id=repo_id),
        registry=registry,
        trusted=trusted,
        allow_unscanned=allow_unscanned,
    )
    failed = result.first_failure
    if as_json:
        payload = {
            "image": result.image,
            "digest": result.digest,
            "ok": result.ok,
            "refused_by": failed.name if failed else None,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks],
        }
        _echo(json.dumps(payload, indent=2))
    else:
        width = max(len(c.name) for c in result.checks)
        for check in result.checks:
            _echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<{width}}  {check.detail}")
        if failed is None:
            _echo(f"verified {result.reference}")
        else:
            _echo(f"refused {result.reference}: {failed.name}: {failed.detail}")
    raise typer.Exit(0 if failed is None else 1)


def sbom(reference: Reference, as_json: JsonFlag = False) -> None:
    """The packages of an image digest's SBOM (name, version, type); exit 1 when it has none."""
    from clients.oci_artifacts import SBOM_SUFFIX, attached_layers
    from clients.registry import RegistryClientError
    from flows.supply.sbom import SbomError, parse_sbom, sbom_packages, sbom_subject_digest

    registry, repository, digest = _target(reference)
    try:
        layers = attached_layers(registry, repository, digest, SBOM_SUFFIX)
        if not layers:
            raise SbomError(f"no SBOM attached to {reference}")
        document = parse_sbom(layers[-1].content)
    except (RegistryClientError, SbomError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    packages = sbom_packages(document)
    if as_json:
        payload = {
            "image": f"{registry.address}/{repository}",
            "digest": digest,
            "describes": sbom_subject_digest(document),
            "packages": [{"name": p.name, "version": p.version, "type": p.type} for p in packages],
        }
        _echo(json.dumps(payload, indent=2))
        return
    _echo(f"SBOM of {registry.address}/{repository}@{digest}: {len(packages)} packages")
    name_width = max((len(p.name) for p in packages), default=4)
    version_width = max((len(p.version) for p in packages), default=7)
    for package in packages:
        _echo(f"{package.name:<{name_width}}  {package.version:<{version_width}}  {package.type}")


def register(app: typer.Typer) -> None:
    app.command()(verify)
    app.command()(sbom)
