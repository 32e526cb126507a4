"""Manifest discovery for the scan: what is found by default, and what is never looked at."""

from __future__ import annotations

from pathlib import Path

from flows.steps.manifests import discover, load_manifests


def write(root: Path, relative: str, text: str = "flask==3.0.0\n") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_discovery_finds_requirements_at_any_depth_outside_excluded_folders(
    tmp_path: Path,
) -> None:
    write(tmp_path, "requirements.txt")
    write(tmp_path, "services/api/requirements-dev.txt")
    write(tmp_path, "services/api/.venv/lib/site/requirements.txt")
    write(tmp_path, "web/node_modules/pkg/requirements.txt")
    write(tmp_path, ".git/requirements.txt")
    write(tmp_path, "services/api/constraints.txt")
    write(tmp_path, "Requirements.txt.bak")

    found = [(p.relative_to(tmp_path).as_posix(), kind) for p, kind in discover(tmp_path)]

    assert found == [
        ("requirements.txt", "requirements"),
        ("services/api/requirements-dev.txt", "requirements"),
    ]


def test_root_manifests_join_the_default_set_and_a_lock_covers_its_pyproject(
    tmp_path: Path,
) -> None:
    write(tmp_path, "pyproject.toml", '[project]\nname = "a"\ndependencies = ["flask"]\n')
    write(tmp_path, "poetry.lock", '[[package]]\nname = "flask"\nversion = "3.0.0"\n')
    write(tmp_path, "services/x/pyproject.toml", "[project]\nname = 'x'\n")  # not at the root

    manifests = load_manifests(tmp_path)

    assert [(m.path, m.kind) for m in manifests] == [("poetry.lock", "poetry.lock")]
    assert [(p.name, p.version) for p in manifests[0].pins] == [("flask", "3.0.0")]
