"""Repository identity: exact names and GitHub ids decide; slugs never collide."""

from __future__ import annotations

import pytest

from core.identity import RepositoryIdentity, identity_of, name_slug, repository_slug


def test_names_that_differ_only_in_dash_underscore_or_dot_never_share_a_slug() -> None:
    slugs = {name_slug(name) for name in ("org/my-svc", "org/my_svc", "org/my.svc", "org-my/svc")}
    assert len(slugs) == 4
    assert all(slug.startswith("org-my-svc-") or slug.startswith("org-my-svc") for slug in slugs)


def test_a_name_differing_only_in_case_is_the_same_repository() -> None:
    assert name_slug("Acme/API") == name_slug("acme/api")
    assert RepositoryIdentity(full_name="Acme/API", id=7).admits(
        RepositoryIdentity(full_name="acme/api", id=7)
    )


def test_a_name_slugging_leaves_unchanged_keeps_its_slug() -> None:
    # A local folder run by path: already a slug, nothing to disambiguate.
    assert name_slug("sample-service") == "sample-service"
    assert repository_slug("/tmp/x/sample-service") == "sample-service"


def test_long_names_stay_within_63_characters_and_distinct() -> None:
    a, b = "acme/" + "a" * 100, "acme/" + "a" * 99 + "b"
    assert len(name_slug(a)) <= 63 and len(name_slug(b)) <= 63
    assert name_slug(a) != name_slug(b)


def test_a_lookup_with_a_github_id_admits_only_records_of_that_id() -> None:
    webhook = RepositoryIdentity(full_name="acme/api", id=1296269)
    assert webhook.admits(RepositoryIdentity(full_name="acme/api", id=1296269))
    # A CLI run by path that called itself acme/api, or an older repository of that name.
    assert not webhook.admits(RepositoryIdentity(full_name="acme/api"))
    assert not webhook.admits(RepositoryIdentity(full_name="acme/api", id=1))
    assert not webhook.admits(RepositoryIdentity(full_name="acme/api2", id=1296269))
    # The operator's lookup by name alone sees every record of that name.
    assert RepositoryIdentity(full_name="acme/api").admits(webhook)


def test_identity_of_a_run() -> None:
    assert identity_of(None, "acme/api", 5) == RepositoryIdentity(full_name="acme/api", id=5)
    assert identity_of("https://github.com/acme/api.git", None).full_name == "acme/api"
    assert identity_of("/srv/repos/tasks-api/", None).full_name == "tasks-api"
    with pytest.raises(ValueError, match="full name"):
        identity_of(None, None, 5)
