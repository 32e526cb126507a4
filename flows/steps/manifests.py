"""Dependency manifests in a checkout, and what each asks Snyk to test.

Requirements files go to Snyk whole (it resolves transitive dependencies); lock files are
already resolved, so each pinned registry package is asked about on its own; a pyproject.toml
without a lock beside it contributes its ``[project].dependencies`` as a requirements text.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ManifestKind = Literal["requirements", "pyproject", "poetry.lock", "uv.lock"]

REQUIREMENTS_NAME = "requirements*.txt"
ROOT_MANIFESTS = ("pyproject.toml", "poetry.lock", "uv.lock")
LOCK_FILES = ("poetry.lock", "uv.lock")
EXCLUDED_DIRS = frozenset({".git", ".venv", "node_modules"})
# Manifests are small; anything larger is not one, and must not be read into memory whole.
MAX_MANIFEST_BYTES = 5_000_000


class ManifestError(ValueError):
    """A manifest that cannot be read or parsed."""


@dataclass(frozen=True)
class Pin:
    """One exact package version from a lock file."""

    ecosystem: str
    name: str
    version: str


@dataclass(frozen=True)
class Manifest:
    """One file to scan: ``path`` relative to the checkout."""

    path: str
    kind: ManifestKind
    # For requirements and pyproject: the requirements text for Snyk's pip test.
    requirements: str = ""
    # For lock files: the pinned registry packages.
    pins: list[Pin] = field(default_factory=list)


REQUIREMENTS_SUFFIXES = (".txt", ".in")


def _kind(path: Path, relative: str) -> ManifestKind:
    name = path.name
    if name == "pyproject.toml":
        return "pyproject"
    if name in LOCK_FILES:
        return "poetry.lock" if name == "poetry.lock" else "uv.lock"
    if path.suffix in REQUIREMENTS_SUFFIXES:
        return "requirements"
    # Sending some other file to the pip test would "pass" it without testing anything.
    raise ManifestError(
        f"{relative}: not a manifest the scan understands (requirements *.txt or *.in, "
        f"pyproject.toml, poetry.lock, uv.lock)"
    )


def _inside(checkout: Path, path: Path) -> bool:
    # A glob or symlink must not lead the scan to read (and send) files outside the checkout.
    try:
        return path.resolve().is_relative_to(checkout.resolve())
    except OSError:
        return False


def _requirements_files(checkout: Path) -> list[Path]:
    """``requirements*.txt`` anywhere in the checkout, outside the excluded folders.

    A walk that prunes those folders rather than a ``**`` glob filtered afterwards: a
    node_modules or virtualenv can hold hundreds of thousands of files not worth listing.
    """
    found: list[Path] = []
    for folder, dirnames, filenames in os.walk(checkout):
        # In place, so the walk never descends into them; sorted for a stable order.
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        found += [
            Path(folder, name)
            for name in sorted(filenames)
            if fnmatch.fnmatchcase(name, REQUIREMENTS_NAME)
        ]
    return found


def discover(checkout: Path, globs: list[str] | None = None) -> list[tuple[Path, ManifestKind]]:
    """Manifest files in ``checkout``: the ``[scan] manifests`` globs, or the default set."""
    found: dict[Path, ManifestKind] = {}
    if globs:
        candidates = []
        for pattern in globs:
            try:
                candidates += sorted(checkout.glob(pattern))
            except (ValueError, NotImplementedError) as exc:
                raise ManifestError(f"[scan] manifests: bad glob {pattern!r} ({exc})") from exc
    else:
        candidates = _requirements_files(checkout)
        candidates += [checkout / name for name in ROOT_MANIFESTS]
    for path in candidates:
        relative = path.relative_to(checkout)
        if path.is_file() and _inside(checkout, path) and path not in found:
            found[path] = _kind(path, relative.as_posix())
    # A lock file beside a pyproject.toml already pins everything the pyproject asks for.
    return [
        (path, kind)
        for path, kind in found.items()
        if not (kind == "pyproject" and any((path.parent / lock).is_file() for lock in LOCK_FILES))
    ]


def _read(path: Path, relative: str) -> str:
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{relative}: larger than {MAX_MANIFEST_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{relative}: cannot be read ({type(exc).__name__})") from exc


def _toml(text: str, relative: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{relative}: not valid TOML ({exc})") from exc


def requirement_lines(text: str) -> str:
    """A requirements text with only what Snyk can resolve by name.

    Option lines (``-r``, ``-e``, ``--index-url`` ...) and direct URL references are dropped:
    they cannot be resolved by name, and index URLs may carry credentials that must not leave.
    """
    lines: list[str] = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")) or "://" in line:
            continue
        # Per-requirement options such as --hash follow the requirement itself.
        lines.append(line.split(" --", 1)[0].strip())
    return "\n".join(lines) + ("\n" if lines else "")


def _pyproject_requirements(data: dict[str, Any]) -> str:
    project = data.get("project")
    dependencies = project.get("dependencies") if isinstance(project, dict) else None
    if not isinstance(dependencies, list):
        return ""
    return requirement_lines("\n".join(str(d) for d in dependencies))


def _pins(data: dict[str, Any], kind: ManifestKind) -> list[Pin]:
    pins: dict[tuple[str, str], Pin] = {}
    packages = data.get("package")
    for package in packages if isinstance(packages, list) else []:
        if not isinstance(package, dict):
            continue
        name, version = package.get("name"), package.get("version")
        source = package.get("source")
        if not isinstance(name, str) or not isinstance(version, str):
            continue
        if kind == "uv.lock":
            # Only registry packages have a PyPI identity; the project itself, paths and git
            # checkouts do not.
            if not isinstance(source, dict) or "registry" not in source:
                continue
        elif isinstance(source, dict) and source.get("type") not in (None, "legacy"):
            continue
        pins.setdefault((name.lower(), version), Pin("pypi", name, version))
    return list(pins.values())


def load_manifests(checkout: Path, globs: list[str] | None = None) -> list[Manifest]:
    """Every manifest to scan, parsed; empty ones (nothing to ask about) are left out."""
    manifests: list[Manifest] = []
    for path, kind in discover(checkout, globs):
        relative = path.relative_to(checkout).as_posix()
        text = _read(path, relative)
        if kind == "requirements":
            manifest = Manifest(relative, kind, requirements=requirement_lines(text))
        elif kind == "pyproject":
            requirements = _pyproject_requirements(_toml(text, relative))
            manifest = Manifest(relative, kind, requirements=requirements)
        else:
            manifest = Manifest(relative, kind, pins=_pins(_toml(text, relative), kind))
        if manifest.requirements or manifest.pins:
            manifests.append(manifest)
    return manifests
