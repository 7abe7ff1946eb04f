"""The simulation attester: evidence signed by a per-machine Ed25519 "platform key".

In simulation the platform key is a file of the user who runs twofold, readable by every process of that user
(and by root), so any of them can forge simulation evidence: it proves which code was *asked* to run, not that
it runs or that memory is protected. A hardware backend replaces this class: SGX DCAP would
produce a quote over the same (measurement, report_data) via Gramine's /dev/attestation; SEV-SNP/TDX would
fill an attestation report's REPORT_DATA the same way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from twofold.crypto.evidence import Evidence, report_data_for, sign_evidence
from twofold.errors import ConfigError

SIMULATION = "simulation"
HOME_ENV = "TWOFOLD_HOME"


class Attester(Protocol):
    """Produces evidence for a verifier's nonce, bound to the enclave's public key and its broker identity."""

    backend: str

    def evidence(self, measurement: str, nonce: str, public_key_raw: bytes, config: str) -> Evidence: ...


def twofold_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".twofold")


def default_platform_key_path() -> Path:
    return twofold_home() / "simulation" / "platform-ed25519.pem"


def load_or_create_platform_key(path: Path | None = None) -> Ed25519PrivateKey:
    """This machine's simulated platform key, created (mode 0600) on first use."""
    path = Path(path or default_platform_key_path())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            return load_or_create_platform_key(path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return key
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a simulation platform key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


class SimulationAttester:
    """Signs evidence with the simulated platform key. Says "simulation" in every piece of evidence."""

    backend = SIMULATION

    def __init__(self, platform_key: Ed25519PrivateKey) -> None:
        self._key = platform_key

    def evidence(self, measurement: str, nonce: str, public_key_raw: bytes, config: str) -> Evidence:
        claims = Evidence(backend=self.backend, measurement=measurement, nonce=nonce,
                          report_data=report_data_for(public_key_raw), timestamp=time.time(), config=config)
        return sign_evidence(claims, self._key)
