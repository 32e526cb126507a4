"""Receiver settings: no start with an empty, short or placeholder secret; rotation; store URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhooks.settings import ReceiverSettings, RepositoryAllowlist, SettingsError, load_settings

GOOD = "3f9c1e7a5b2d8c4e6f0a1b2c3d4e5f60"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GANTRY_WEBHOOK_SECRET", "GANTRY_WEBHOOK_SECRET_PREVIOUS", "GANTRY_WEBHOOK_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def served_repositories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_WEBHOOK_REPOSITORIES", "acme/*")


def test_without_a_repository_allowlist_the_receiver_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GANTRY_WEBHOOK_REPOSITORIES")
    with pytest.raises(SettingsError, match="GANTRY_WEBHOOK_REPOSITORIES: is not set"):
        load_settings(webhook_secret=GOOD)


@pytest.mark.parametrize("value", ["", " , ", "acme", "acme/api/x", "acme/a b", "*/api"])
def test_an_empty_or_malformed_allowlist_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GANTRY_WEBHOOK_REPOSITORIES", value)
    with pytest.raises(SettingsError, match="GANTRY_WEBHOOK_REPOSITORIES"):
        load_settings(webhook_secret=GOOD)


def test_the_allowlist_takes_repositories_organizations_or_everything() -> None:
    listed = RepositoryAllowlist.parse("Acme/*, other/svc")
    assert listed.allows("acme/api") and listed.allows("ACME/web")
    assert listed.allows("Other/SVC")
    assert not listed.allows("other/svc2") and not listed.allows("acme-evil/api")
    assert RepositoryAllowlist.parse("*").allows("anyone/anything")


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "   ",
        "short-secret",
        "changeme",
        "secret",
        "your-secret",
        "CHANGEME-CHANGEME",
        "your_webhook_secret",
        "x" * 40,
        "password-password-password",
    ],
)
def test_unsafe_secrets_refuse_to_start_with_a_clear_message(secret: str) -> None:
    with pytest.raises(SettingsError, match="GANTRY_WEBHOOK_SECRET") as caught:
        load_settings(webhook_secret=secret)
    if len(secret.strip()) >= 10:  # shorter ones are common words of the message itself
        assert secret not in str(caught.value)


def test_a_missing_secret_is_named_in_the_error() -> None:
    with pytest.raises(SettingsError, match="GANTRY_WEBHOOK_SECRET: is not set"):
        load_settings()


def test_the_secret_is_read_from_the_environment_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GANTRY_WEBHOOK_SECRET", GOOD)
    settings = load_settings()
    assert settings.webhook_secret.get_secret_value() == GOOD
    assert GOOD not in repr(settings) and GOOD not in str(settings.model_dump())


def test_a_previous_secret_is_accepted_during_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_WEBHOOK_SECRET", GOOD)
    monkeypatch.setenv("GANTRY_WEBHOOK_SECRET_PREVIOUS", GOOD[::-1])
    assert [s.get_secret_value() for s in load_settings().secrets] == [GOOD, GOOD[::-1]]


def test_an_unsafe_previous_secret_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_WEBHOOK_SECRET", GOOD)
    monkeypatch.setenv("GANTRY_WEBHOOK_SECRET_PREVIOUS", "changeme")
    with pytest.raises(SettingsError, match="GANTRY_WEBHOOK_SECRET_PREVIOUS"):
        load_settings()


def test_the_store_defaults_to_a_sqlite_file_in_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other tests' local stack exports its ports; the defaults are what is pinned here.
    for name in ("GANTRY_HOST", "GANTRY_WEBHOOK_PORT", "GANTRY_WEBHOOK_STORE"):
        monkeypatch.delenv(name, raising=False)
    settings = ReceiverSettings(webhook_secret=GOOD, home=tmp_path)
    assert settings.store_url == f"sqlite:///{tmp_path.resolve()}/webhooks.db"
    assert settings.host == "127.0.0.1" and settings.webhook_port == 8787
    assert settings.webhook_max_body_bytes == 25 * 1024 * 1024


def test_a_postgresql_store_url_is_taken_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANTRY_WEBHOOK_STORE", "postgresql://gantry@db:5432/gantry")
    settings = ReceiverSettings(webhook_secret=GOOD)
    assert settings.store_url == "postgresql://gantry@db:5432/gantry"
