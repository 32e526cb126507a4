"""DSSE envelopes (Dead Simple Signing Envelope, v1.0): sign and verify a typed payload.

The signature covers the PAE (pre-authentication encoding) of the payload type and the payload
bytes, never the JSON around them, so nothing in the envelope is parsed before it is verified
and no canonical JSON is needed: ``PAE = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``,
lengths as ASCII decimal byte counts.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from flows.supply.keys import SigningKey, TrustedKeys

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"


class EnvelopeError(ValueError):
    """Bytes that are not a DSSE envelope."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """The bytes a DSSE signature is made over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = ()

    @classmethod
    def sign(
        cls, payload: bytes, key: SigningKey, payload_type: str = IN_TOTO_PAYLOAD_TYPE
    ) -> Envelope:
        signature = Signature(key.keyid, key.sign(pae(payload_type, payload)))
        return cls(payload_type, payload, (signature,))

    def verified_by(self, trusted: TrustedKeys) -> str | None:
        """The id of the first trusted key that signed this envelope, else None."""
        message = pae(self.payload_type, self.payload)
        for signature in self.signatures:
            found = trusted.verify(signature.sig, message, signature.keyid or None)
            if found is not None:
                return found
        return None

    def to_json(self) -> bytes:
        document = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in self.signatures
            ],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        try:
            document = json.loads(data)
            signatures = tuple(
                Signature(str(s.get("keyid") or ""), base64.b64decode(s["sig"], validate=True))
                for s in document["signatures"]
            )
            return cls(
                str(document["payloadType"]),
                base64.b64decode(document["payload"], validate=True),
                signatures,
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise EnvelopeError(f"not a DSSE envelope: {type(exc).__name__}: {exc}") from None
