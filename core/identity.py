"""Names derived from untrusted input (repository names, URLs): slugged before any use."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath

_NON_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(text: str, max_length: int = 63) -> str:
    """Lowercase letters, digits and single dashes: safe for tags, artifact keys, k8s names."""
    slug = _NON_SLUG.sub("-", text.lower()).strip("-")
    if len(slug) > max_length:
        # Keep names unique when truncating: the tail is a short hash of the whole.
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        slug = f"{slug[: max_length - 9].rstrip('-')}-{digest}"
    return slug or "repo"


def repository_slug(repository: str, repository_name: str | None = None) -> str:
    """``owner/name`` when known, else the last path element of the URL or folder."""
    if repository_name:
        return slugify(repository_name)
    tail = PurePosixPath(repository.rstrip("/")).name.removesuffix(".git")
    return slugify(tail)
