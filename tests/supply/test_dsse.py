"""DSSE envelopes and the signing keys, without a registry."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from core.settings import StackSettings
from flows.supply.dsse import IN_TOTO_PAYLOAD_TYPE, Envelope, EnvelopeError, pae
from flows.supply.keys import (
    PUBLIC_KEY_NAME,
    SigningKey,
    SupplySettings,
    TrustedKeys,
    load_signing_key,
    trust,
)


def test_pae_is_the_specs_encoding() -> None:
    # The DSSE v1 protocol's own example: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    # Lengths count bytes, not characters.
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_an_envelope_round_trips_and_its_signature_covers_the_pae() -> None:
    key = SigningKey.generate()
    payload = b'{"_type":"https://in-toto.io/Statement/v1"}'
    envelope = Envelope.sign(payload, key)
    document = json.loads(envelope.to_json())
    assert document["payloadType"] == IN_TOTO_PAYLOAD_TYPE
    assert base64.b64decode(document["payload"]) == payload
    assert document["signatures"][0]["keyid"] == key.keyid
    # The signature is plain ECDSA P-256/SHA-256 over the PAE, as cosign verifies it.
    key.public_key.verify(
        base64.b64decode(document["signatures"][0]["sig"]),
        pae(IN_TOTO_PAYLOAD_TYPE, payload),
        ec.ECDSA(hashes.SHA256()),
    )
    again = Envelope.from_json(envelope.to_json())
    assert again == envelope
    assert again.verified_by(TrustedKeys.of(key.public_key)) == key.keyid


def test_a_changed_payload_or_type_or_an_untrusted_key_does_not_verify() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    envelope = Envelope.sign(b"payload", key)
    trusted = TrustedKeys.of(key.public_key)
    assert (
        Envelope(envelope.payload_type, b"payloaD", envelope.signatures).verified_by(trusted)
        is None
    )
    assert (
        Envelope("text/plain", envelope.payload, envelope.signatures).verified_by(trusted) is None
    )
    assert envelope.verified_by(TrustedKeys.of(other.public_key)) is None
    assert envelope.verified_by(TrustedKeys({})) is None


def test_a_key_id_is_only_a_hint() -> None:
    key = SigningKey.generate()
    envelope = Envelope.sign(b"payload", key)
    relabelled = json.loads(envelope.to_json())
    relabelled["signatures"][0]["keyid"] = "someone-else"
    parsed = Envelope.from_json(json.dumps(relabelled).encode())
    assert parsed.verified_by(TrustedKeys.of(key.public_key)) == key.keyid


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b'{"payloadType":"x"}', b'{"payloadType":"x","payload":"!!","signatures":[]}'],
)
def test_malformed_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        Envelope.from_json(data)


def test_the_signing_key_is_made_once_0600_with_its_public_key_beside_it_and_trusted(
    tmp_path: Path,
) -> None:
    stack = StackSettings(home=tmp_path)
    settings = SupplySettings()
    key = load_signing_key(settings, stack)
    path = settings.key_path(stack)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (path.parent / PUBLIC_KEY_NAME).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_signing_key(settings, stack).keyid == key.keyid
    assert list(TrustedKeys.configured(settings, stack).keys) == [key.keyid]
    assert key.keyid[:16] in repr(key) and "PRIVATE" not in repr(key)


def test_a_configured_key_that_is_missing_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    settings = SupplySettings(signing_key=tmp_path / "absent.pem")
    with pytest.raises(RuntimeError, match="no signing key"):
        load_signing_key(settings, StackSettings(home=tmp_path))
    assert not (tmp_path / "absent.pem").exists()


def test_rotation_trusts_two_keys_at_once_and_removing_one_revokes_it(tmp_path: Path) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    folder = tmp_path / "trusted"
    old_file = trust(old.public_key, folder)
    trust(new.public_key, folder)
    trusted = TrustedKeys.from_folder(folder)
    assert Envelope.sign(b"p", old).verified_by(trusted) == old.keyid
    assert Envelope.sign(b"p", new).verified_by(trusted) == new.keyid
    old_file.unlink()
    trusted = TrustedKeys.from_folder(folder)
    assert Envelope.sign(b"p", old).verified_by(trusted) is None
    assert Envelope.sign(b"p", new).verified_by(trusted) == new.keyid
