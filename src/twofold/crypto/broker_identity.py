"""The key broker's identity, as an enclave pins it, and the signed statements the broker makes.

An enclave trusts exactly one key broker: the one whose identity the *owner* gave it (a small JSON file that
``twofold kbs identity`` writes). The identity names the owner's keystore, the broker's Ed25519 signing key
(derived from the keystore, so it survives restarts), the owner's X25519 public key and, for an https broker,
the CA of its TLS certificate. The enclave reports the identity's digest in its evidence (the ``config`` claim;
SEV-SNP's HOST_DATA, TDX's MRCONFIGID, a Gramine manifest's measured files on hardware), and the broker releases
keys only to evidence that names *its own* identity. Every grant and release the broker sends is signed and
bound to the request, and the enclave verifies it with the pinned key. So neither a relay in front of the broker
nor the untrusted host that starts the enclave can inject keys: an enclave started with another identity gets
nothing from the real broker, and one started with the real identity accepts nothing the broker did not sign.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from twofold.crypto.mac import canonical
from twofold.errors import ConfigError, IntegrityError

FORMAT = "twofold-broker-identity"
FORMAT_VERSION = 1
_DIGEST_DOMAIN = b"twofold-broker-identity-v1\x00"
_STATEMENT_DOMAIN = b"twofold-kbs-statement-v1\x00"
_FIELDS = {"format", "format_version", "keystore_id", "signing_key", "owner_public_key", "tls_ca"}


@dataclass(frozen=True)
class BrokerIdentity:
    """Who the enclave's key broker is: public facts only, all covered by :meth:`digest`."""

    keystore_id: str
    signing_key: bytes  # raw Ed25519 public key
    owner_public_key: bytes  # raw X25519 public key
    tls_ca: str = ""  # PEM of the CA that signs an https broker's certificate ("" for loopback http)

    def __post_init__(self) -> None:
        if len(self.signing_key) != 32 or len(self.owner_public_key) != 32 or not self.keystore_id:
            raise ConfigError("a broker identity needs a keystore id and two 32-byte public keys")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "keystore_id": self.keystore_id,
                "signing_key": base64.b64encode(self.signing_key).decode(),
                "owner_public_key": base64.b64encode(self.owner_public_key).decode(), "tls_ca": self.tls_ca}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> BrokerIdentity:
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or set(doc) != _FIELDS or doc["format"] != FORMAT \
                    or doc["format_version"] != FORMAT_VERSION:
                raise ValueError("fields")
            return cls(str(doc["keystore_id"]), base64.b64decode(doc["signing_key"], validate=True),
                       base64.b64decode(doc["owner_public_key"], validate=True), str(doc["tls_ca"]))
        except (ValueError, TypeError, KeyError):
            raise ConfigError("not a twofold broker identity (write one with `twofold kbs identity`)") from None

    @classmethod
    def load(cls, path: Path | str) -> BrokerIdentity:
        try:
            return cls.from_json(Path(path).read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"broker identity file {path} does not exist") from None

    def digest(self) -> str:
        """The hex digest an enclave's evidence carries as its ``config`` claim."""
        return sha256(_DIGEST_DOMAIN + canonical(self.to_dict())).hexdigest()

    def verify(self, purpose: str, body: dict[str, Any], signature: Any) -> None:
        """Check the broker's signature over ``body`` for ``purpose``; the opaque IntegrityError if it fails."""
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_key).verify(
                base64.b64decode(str(signature), validate=True), statement(purpose, body))
        except (InvalidSignature, ValueError):
            raise IntegrityError() from None


def statement(purpose: str, body: dict[str, Any]) -> bytes:
    """The bytes a broker signs: a domain, the purpose (``grant``, ``release``) and the body's canonical JSON."""
    return _STATEMENT_DOMAIN + purpose.encode() + b"\x00" + canonical(body)


def sign_statement(key: Ed25519PrivateKey, purpose: str, body: dict[str, Any]) -> str:
    return base64.b64encode(key.sign(statement(purpose, body))).decode()


def digest_of(data: bytes) -> str:
    """The hex SHA-256 of a released blob, as a release statement lists it."""
    return sha256(data).hexdigest()
