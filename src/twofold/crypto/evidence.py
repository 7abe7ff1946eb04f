"""Attestation evidence: what an attester signs and a verifier checks.

Evidence binds an enclave's code measurement to a verifier's fresh nonce and to the enclave's ephemeral public
key (``report_data = SHA-256(public key)``), so keys released to that public key reach only that enclave
instance. ``config`` is the digest of the key-broker identity the enclave was given
(:mod:`twofold.crypto.broker_identity`), so a broker can refuse an enclave that trusts some other broker. The
simulation backend signs evidence with a per-machine Ed25519 "platform key"; hardware backends
carry a vendor-signed quote instead (see docs/threat-model.md).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from hashlib import sha256, sha384, sha512

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from twofold.errors import AttestationError

EVIDENCE_VERSION = 2


def report_data_for(public_key_raw: bytes) -> str:
    """The report data that binds evidence to an enclave's ephemeral public key."""
    return sha256(b"twofold-report-data-v1\x00" + public_key_raw).hexdigest()


def _fields(*parts: bytes) -> bytes:
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def hardware_report_data(nonce: str, public_key_raw: bytes, config: str) -> bytes:
    """The 64 bytes a hardware report's REPORT_DATA carries: the verifier's nonce, the enclave's ephemeral key and
    the broker identity it pins, so the report answers this challenge for this key and this broker."""
    return sha512(b"twofold-hw-report-data-v1\x00" + _fields(nonce.encode(), public_key_raw, config.encode())).digest()


def launch_binding(measurement: str, config: str, size: int = 32) -> bytes:
    """What the host sets at launch and the hardware measures (SEV-SNP HOST_DATA: 32 bytes; TDX MRCONFIGID: 48):
    twofold's TCB measurement and the broker identity, so a good VM image runs only that code for that broker."""
    body = b"twofold-launch-binding-v1\x00" + _fields(measurement.encode(), config.encode())
    return (sha256(body) if size == 32 else sha384(body)).digest()


def replay_rtmr(events: tuple[str, ...] | list[str]) -> str:
    """The RTMR value that extending a zeroed register with ``events`` (hex SHA-384 digests) in order gives:
    RTMR := SHA-384(RTMR || event), as TDX extends it."""
    register = bytes(48)
    for event in events:
        digest = bytes.fromhex(event)
        if len(digest) != 48:
            raise ValueError("an RTMR event is a 48-byte SHA-384 digest")
        register = sha384(register + digest).digest()
    return register.hex()


@dataclass(frozen=True)
class Evidence:
    """Claims of one attestation, plus the platform's signature over their canonical form."""

    backend: str
    measurement: str
    nonce: str
    report_data: str
    timestamp: float
    config: str = ""  # hex digest of the broker identity the enclave pins
    platform_key: str = ""  # base64 raw Ed25519 public key (simulation backend)
    signature: str = ""  # base64 Ed25519 signature (simulation backend)
    quote: str = ""  # base64 hardware evidence: an SEV-SNP report, a TDX or SGX quote
    event_log: tuple[str, ...] = ()  # TDX: the hex SHA-384 digests extended into RTMR3, in order
    version: int = EVIDENCE_VERSION

    def claims(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Evidence:
        if not isinstance(data, dict):
            raise AttestationError("evidence must be an object")
        try:
            evidence = cls(
                backend=str(data["backend"]), measurement=str(data["measurement"]), nonce=str(data["nonce"]),
                report_data=str(data["report_data"]), timestamp=float(data["timestamp"]),
                config=str(data.get("config", "")),
                platform_key=str(data.get("platform_key", "")), signature=str(data.get("signature", "")),
                quote=str(data.get("quote", "")),
                event_log=tuple(str(e) for e in data.get("event_log", ()) or ()),
                version=int(data.get("version", 0)),
            )
        except (KeyError, TypeError, ValueError):
            raise AttestationError("malformed evidence") from None
        if evidence.version != EVIDENCE_VERSION:
            raise AttestationError(f"unsupported evidence version {evidence.version}")
        return evidence


def sign_evidence(evidence: Evidence, platform_key: Ed25519PrivateKey) -> Evidence:
    """Sign evidence with a (simulated) platform key."""
    public = base64.b64encode(platform_key.public_key().public_bytes_raw()).decode()
    unsigned = Evidence(**{**asdict(evidence), "platform_key": public, "signature": ""})
    signature = base64.b64encode(platform_key.sign(unsigned.claims())).decode()
    return Evidence(**{**asdict(unsigned), "signature": signature})


def check_signature(evidence: Evidence) -> bytes:
    """Verify the evidence signature against the key it names; returns that raw public key."""
    try:
        raw = base64.b64decode(evidence.platform_key, validate=True)
        Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(evidence.signature, validate=True),
                                                       evidence.claims())
    except (InvalidSignature, ValueError):
        raise AttestationError("evidence signature is invalid") from None
    return raw
