"""Supply chain: each pushed image's SBOM and signed provenance, attached and verified.

``attest.attest_image`` runs after a push (trusted side, holding the signing key);
``verify.verify_release`` runs before a release's approval gate, with the trusted public keys.
"""
