"""Keys missing in the cluster: a merge fails at ``attest``, a release at ``provenance``.

The work pool mounts the signing Secret and the trusted-keys ConfigMap as optional volumes, so a
missing one leaves its folder empty and the flow run starts. These call the two stages' own
functions with the settings pointing at such an empty folder and check the stage fails, naming
what is missing, before any registry is contacted (the registry address here answers nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.schemas.objects import State

from flows.results import StageResult, StageStatus
from flows.supply.keys import SigningKey, trust
from flows.supply.stage import attest_images, verify_provenance
from flows.supply.verify import Expected

pytestmark = pytest.mark.anyio
# Nothing listens there: a stage that reached the registry would fail for another reason.
REGISTRY = "127.0.0.1:9"
DIGEST = "sha256:" + "ab" * 32
IMAGES = {"api": f"{REGISTRY}/acme/api@{DIGEST}"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The two mount points as an optional volume leaves them without their object: empty."""
    signing, trusted = tmp_path / "provenance-signing", tmp_path / "provenance-trusted-keys"
    signing.mkdir()
    trusted.mkdir()
    monkeypatch.setenv("GANTRY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GANTRY_SUPPLY_SIGNING_KEY", str(signing / "provenance-signing.pem"))
    monkeypatch.setenv("GANTRY_SUPPLY_TRUSTED_KEYS", str(trusted))
    for name in ("GANTRY_REGISTRY_USERNAME", "GANTRY_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return signing, trusted


def failed_stage(state: State[StageResult]) -> StageResult:
    assert state.is_failed(), state
    result = state.data
    assert isinstance(result, StageResult)
    assert result.status == StageStatus.FAILED
    return result


async def attest() -> State[StageResult]:
    return await attest_images.fn(
        images=IMAGES,
        registry=REGISTRY,
        repository="acme/api",
        repository_id=1,
        commit=COMMIT,
        flow_run_id="run",
        flow_run_url=None,
        verdict="passed",
        counts={},
    )


async def provenance() -> State[StageResult]:
    expected = Expected(commit=COMMIT, repository="acme/api", repository_id=1)
    return await verify_provenance.fn(IMAGES, REGISTRY, expected)


async def test_without_the_signing_secret_the_merge_fails_at_attest_naming_the_key(
    mounts: tuple[Path, Path],
) -> None:
    signing, _ = mounts
    result = failed_stage(await attest())
    assert result.name == "attest"
    assert result.detail == f"no signing key at {signing / 'provenance-signing.pem'}"
    # A missing key is not replaced by a new one nobody trusts.
    assert list(signing.iterdir()) == []


async def test_an_unreadable_signing_key_fails_attest_without_echoing_its_content(
    mounts: tuple[Path, Path],
) -> None:
    signing, _ = mounts
    material = "c2VjcmV0LWtleS1tYXRlcmlhbC1ub3QtYS1rZXk"
    key = signing / "provenance-signing.pem"
    key.write_text(f"-----BEGIN PRIVATE KEY-----\n{material}\n-----END PRIVATE KEY-----\n")
    result = failed_stage(await attest())
    assert result.detail is not None and str(key) in result.detail
    assert material not in result.detail


async def test_without_the_trusted_keys_every_release_is_refused_at_provenance(
    mounts: tuple[Path, Path],
) -> None:
    _, trusted = mounts
    result = failed_stage(await provenance())
    assert result.name == "provenance"
    assert result.detail == f"no trusted public keys (*.pub) in {trusted}"


async def test_with_a_trusted_key_provenance_goes_on_to_the_registry(
    mounts: tuple[Path, Path],
) -> None:
    # The other side of the guard: once a key is trusted the stage reads the registry (which
    # is not there), so the failure above was the missing keys and nothing else.
    _, trusted = mounts
    trust(SigningKey.generate().public_key, trusted)
    result = failed_stage(await provenance())
    assert result.detail is not None and "no trusted public keys" not in result.detail
    assert "check provenance failed" in result.detail
