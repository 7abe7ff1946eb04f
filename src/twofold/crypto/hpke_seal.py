"""Sealing to an X25519 public key with HPKE (RFC 9180: DHKEM-X25519, HKDF-SHA256, AES-256-GCM)."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from twofold.errors import IntegrityError

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def seal_to(recipient: X25519PublicKey, plaintext: bytes, info: bytes) -> bytes:
    """Encrypt to ``recipient`` with a fresh ephemeral key; ``info`` binds the context."""
    return SUITE.encrypt(plaintext, recipient, info=info)


def open_sealed_to(recipient: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    """Decrypt what :func:`seal_to` produced; any failure is the opaque IntegrityError."""
    try:
        return SUITE.decrypt(sealed, recipient, info=info)
    except (InvalidTag, ValueError):
        raise IntegrityError() from None
