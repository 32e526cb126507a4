"""The provenance signing key and the public keys trusted to have signed provenance.

One ECDSA P-256 key signs (what ``cosign generate-key-pair`` makes, so ``cosign
verify-attestation --key`` accepts its public key). It lives on the trusted side only: locally
the state folder's 0600 ``provenance-signing.pem`` (a secret file of ``core.statefiles``),
generated once; in production a Kubernetes Secret mounted as a file
(``GANTRY_SUPPLY_SIGNING_KEY``). Verifiers trust every public key in one folder
(``GANTRY_SUPPLY_TRUSTED_KEYS``), each known by its key id, so two keys can be valid at once
while one replaces the other, and removing a file revokes a key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import StackSettings
from core.statefiles import secret_file

SIGNING_KEY_NAME = "provenance-signing.pem"
PUBLIC_KEY_NAME = "provenance-signing.pub"
TRUSTED_DIR_NAME = "provenance-trusted-keys"


class SupplyKeyError(RuntimeError):
    """A key could not be made, read or used."""


class SupplySettings(BaseSettings):
    """Where the signing key and the trusted public keys are (``GANTRY_SUPPLY_*``)."""

    model_config = SettingsConfigDict(env_prefix="GANTRY_SUPPLY_", extra="ignore")

    signing_key: Path | None = Field(default=None, description="PEM private key file")
    trusted_keys: Path | None = Field(default=None, description="folder of *.pub PEM files")
    builder_id: str | None = Field(default=None, description="the worker's identity")

    def key_path(self, stack: StackSettings | None = None) -> Path:
        return self.signing_key or (stack or StackSettings()).state_dir / SIGNING_KEY_NAME

    def trusted_dir(self, stack: StackSettings | None = None) -> Path:
        default = (stack or StackSettings()).state_dir / TRUSTED_DIR_NAME
        return self.trusted_keys or default

    def builder(self, stack: StackSettings | None = None) -> str:
        return self.builder_id or f"urn:gantry:worker:{(stack or StackSettings()).work_pool}"


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The hex SHA-256 of the key's DER SubjectPublicKeyInfo: stable whatever the file name."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class SigningKey:
    """The private key and its id. Its repr names the id only."""

    private_key: ec.EllipticCurvePrivateKey
    keyid: str

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self.keyid[:16]!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        private = ec.generate_private_key(ec.SECP256R1())
        return cls(private, key_id(private.public_key()))

    @classmethod
    def from_pem(cls, pem: bytes, where: str = "key") -> SigningKey:
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            # The loader's message names the format problem, never the key material.
            raise SupplyKeyError(f"{where} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
            private.curve, ec.SECP256R1
        ):
            raise SupplyKeyError(f"{where} is not an ECDSA P-256 key")
        return cls(private, key_id(private.public_key()))

    def sign(self, message: bytes) -> bytes:
        """An ASN.1 DER ECDSA signature over SHA-256, as cosign writes and reads them."""
        return self.private_key.sign(message, ec.ECDSA(hashes.SHA256()))

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def trust(public_key: ec.EllipticCurvePublicKey, folder: Path) -> Path:
    """Add ``public_key`` to the trusted folder as ``<keyid>.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key_id(public_key)}.pub"
    path.write_bytes(public_pem(public_key))
    return path


def load_signing_key(
    settings: SupplySettings | None = None,
    stack: StackSettings | None = None,
    *,
    create: bool = True,
) -> SigningKey:
    """The signing key; generated once (with its public key beside it, and trusted) when it is
    the local stack's own default file and ``create`` is set."""
    settings = settings or SupplySettings()
    path = settings.key_path(stack)
    if not path.exists():
        if not create or settings.signing_key is not None:
            # A configured key that is missing is an operator's mistake, not a reason to mint
            # a new identity nobody trusts.
            raise SupplyKeyError(f"no signing key at {path}")
        made: list[SigningKey] = []

        def generate() -> str:
            made.append(SigningKey.generate())
            return made[0].private_pem().decode()

        # Written 0600 whole or not at all; when another process won the race, its key is ours.
        key = SigningKey.from_pem(secret_file(path, generate).encode(), str(path))
        if made and made[0].keyid == key.keyid:
            (path.parent / PUBLIC_KEY_NAME).write_bytes(public_pem(key.public_key))
            trust(key.public_key, settings.trusted_dir(stack))
        return key
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SupplyKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
    return SigningKey.from_pem(pem, str(path))


class TrustedKeys:
    """Public keys by key id; a signature counts only when one of them verifies it."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePublicKey]) -> None:
        self.keys = dict(keys)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def of(cls, *public_keys: ec.EllipticCurvePublicKey) -> TrustedKeys:
        return cls({key_id(key): key for key in public_keys})

    @classmethod
    def from_folder(cls, folder: Path) -> TrustedKeys:
        """Every ``*.pub`` PEM in ``folder``; an unreadable or foreign file is an error, since
        a key silently dropped from trust would fail releases for a reason nobody sees."""
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for path in sorted(folder.glob("*.pub")) if folder.is_dir() else []:
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise SupplyKeyError(f"trusted key {path} cannot be read: {exc}") from None
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
                key.curve, ec.SECP256R1
            ):
                raise SupplyKeyError(f"trusted key {path} is not an ECDSA P-256 public key")
            keys[key_id(key)] = key
        return cls(keys)

    @classmethod
    def configured(
        cls, settings: SupplySettings | None = None, stack: StackSettings | None = None
    ) -> TrustedKeys:
        """The configured folder's keys; none at all (the ConfigMap not mounted, the folder
        empty or absent) is an error naming the folder, so a release is refused for that reason
        and not for an untrusted signature nobody can explain."""
        folder = (settings or SupplySettings()).trusted_dir(stack)
        trusted = cls.from_folder(folder)
        if not len(trusted):
            raise SupplyKeyError(f"no trusted public keys (*.pub) in {folder}")
        return trusted

    def verify(self, signature: bytes, message: bytes, keyid: str | None = None) -> str | None:
        """The id of the trusted key that made ``signature`` over ``message``, else None.

        A key id in the envelope is a hint only: it picks the key to try first, but every
        trusted key is tried, and an unknown id proves nothing.
        """
        order = sorted(self.keys, key=lambda known: known != keyid)
        for known in order:
            try:
                self.keys[known].verify(signature, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return known
        return None
