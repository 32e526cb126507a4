"""Repository identity, and names derived from untrusted input: slugged before any use.

A repository is its exact full name (``owner/name``, compared case-insensitively as GitHub
does) plus GitHub's numeric id (None for a repository run from the CLI by path). Slugs are
derived from the identity for display and for names (artifact keys, locks, images, labels);
they never decide which repository a record belongs to, and they never collide: whenever
slugging changes the name, a short hash of the exact name is appended.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

_NON_SLUG = re.compile(r"[^a-z0-9]+")
# GitHub's own alphabet for owner and repository names (letters, digits, "-", "_", ".").
FULL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
HASH_LENGTH = 8

Name = Annotated[str, StringConstraints(min_length=1, max_length=201)]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def slugify(text: str, max_length: int = 63) -> str:
    """Lowercase letters, digits and single dashes: safe for tags, artifact keys, k8s names."""
    slug = _NON_SLUG.sub("-", text.lower()).strip("-")
    if len(slug) > max_length:
        # Keep names unique when truncating: the tail is a short hash of the whole.
        slug = f"{slug[: max_length - HASH_LENGTH - 1].rstrip('-')}-{_digest(text)}"
    return slug or "repo"


def name_slug(full_name: str, max_length: int = 63) -> str:
    """A collision-free slug of a repository name.

    ``org/my-svc``, ``org/my_svc`` and ``org/my.svc`` all slug to ``org-my-svc``: whenever the
    slug is not the (case-folded) name itself, the hash of the case-folded name is appended,
    so two names that differ in anything but case never share a slug.
    """
    folded = full_name.casefold()
    lossy = _NON_SLUG.sub("-", folded).strip("-")
    if lossy == folded and 0 < len(lossy) <= max_length:
        return lossy
    head = lossy[: max_length - HASH_LENGTH - 1].rstrip("-") or "repo"
    return f"{head}-{_digest(folded)}"


class RepositoryIdentity(BaseModel):
    """Which repository: its exact full name and, for GitHub repositories, its numeric id."""

    model_config = ConfigDict(frozen=True)

    full_name: Name
    id: int | None = Field(default=None, gt=0)

    @property
    def key(self) -> str:
        """What two identities are compared on, with the id: the case-folded full name."""
        return self.full_name.casefold()

    @property
    def slug(self) -> str:
        return name_slug(self.full_name)

    @property
    def on_github(self) -> bool:
        return FULL_NAME.match(self.full_name) is not None

    def admits(self, other: RepositoryIdentity) -> bool:
        """Whether a lookup by this identity may return a record of ``other``.

        The names must be equal (case-insensitively); when this identity knows GitHub's id, the
        record must carry the same id: a record from a CLI run by path (no id), or from an
        older repository of the same name, is never taken for this one.
        """
        if self.key != other.key:
            return False
        return self.id is None or self.id == other.id

    def __str__(self) -> str:
        return self.full_name if self.id is None else f"{self.full_name} (id {self.id})"


def location_name(location: str) -> str:
    """The name of a repository known only by its path or clone URL.

    ``https://host/owner/name.git`` is ``owner/name``; a local folder is its folder's name.
    """
    if "://" in location:
        parts = [p for p in urlsplit(location).path.split("/") if p]
        if len(parts) >= 2:
            return f"{parts[-2]}/{parts[-1].removesuffix('.git')}"
    tail = PurePosixPath(location.rstrip("/")).name.removesuffix(".git")
    return tail or "repo"


def identity_of(
    repository: str | None, repository_name: str | None, repository_id: int | None = None
) -> RepositoryIdentity:
    """The identity a run names: ``owner/name`` (and its id) when given, else its location's."""
    if repository_name:
        return RepositoryIdentity(full_name=repository_name, id=repository_id)
    if repository_id is not None:
        raise ValueError("a repository id needs the repository's full name")
    return RepositoryIdentity(full_name=location_name(repository or ""))


def repository_slug(repository: str | None, repository_name: str | None = None) -> str:
    """The display slug of the repository a run names (see ``identity_of``)."""
    return identity_of(repository, repository_name).slug
