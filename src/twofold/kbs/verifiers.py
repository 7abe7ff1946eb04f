"""Verifiers: check evidence against a nonce, a public key and the owner's policy.

- **simulation** (here): evidence signed by a per-machine Ed25519 platform key the policy trusts; accepted only
  with ``allow_simulation``, and logged as SIMULATION every time.
- **sev-snp, tdx, sgx** (:mod:`twofold.kbs.hardware`): an SEV-SNP report verified to AMD's pinned roots
  (:mod:`twofold.kbs.snp`), or a TDX/SGX quote verified with DCAP collateral (:mod:`twofold.kbs.dcap`), then the
  policy's platform rule, the report data and the launch binding of twofold's measurement.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from twofold.crypto.evidence import Evidence, check_signature, report_data_for
from twofold.errors import AttestationError
from twofold.kbs.policy import Policy

log = logging.getLogger("twofold.kbs")
MAX_CLOCK_SKEW_S = 5.0


@dataclass(frozen=True)
class VerifiedClaims:
    backend: str
    measurement: str
    config: str  # the digest of the broker identity the enclave pins


class Verifier(Protocol):
    backend: str

    def verify(self, evidence: Evidence, nonce: str, public_key_raw: bytes) -> VerifiedClaims: ...


class SimulationVerifier:
    """Accepts simulation evidence only when the policy says so explicitly, and warns every time."""

    backend = "simulation"

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def verify(self, evidence: Evidence, nonce: str, public_key_raw: bytes) -> VerifiedClaims:
        if not self._policy.allow_simulation:
            raise AttestationError("simulation evidence is not allowed by the policy")
        platform_key = check_signature(evidence)
        if base64.b64encode(platform_key).decode() not in self._policy.simulation_platform_keys:
            raise AttestationError("evidence is signed by a simulation platform the policy does not trust")
        if evidence.nonce != nonce:
            raise AttestationError("evidence answers a different nonce")
        if evidence.report_data != report_data_for(public_key_raw):
            raise AttestationError("evidence report_data does not match the enclave's public key")
        now = time.time()
        if not now - self._policy.nonce_ttl_seconds <= evidence.timestamp <= now + MAX_CLOCK_SKEW_S:
            raise AttestationError("evidence timestamp is outside the allowed window")
        log.warning("accepted SIMULATION evidence for measurement %s: no hardware memory protection",
                    evidence.measurement[:16])
        return VerifiedClaims(self.backend, evidence.measurement, evidence.config)


def verifier_for(backend: str, policy: Policy) -> Verifier:
    """The verifier of ``backend`` evidence under ``policy``: simulation, or a hardware backend's
    (:mod:`twofold.kbs.hardware`, which needs the policy's platform rule for it)."""
    if backend not in policy.backends:
        raise AttestationError(f"attestation backend {backend!r} is not allowed by the policy")
    if backend == SimulationVerifier.backend:
        return SimulationVerifier(policy)
    from twofold.kbs.hardware import HARDWARE, HardwareVerifier  # loads the SNP and DCAP verifiers on demand

    if backend in HARDWARE:
        return HardwareVerifier(backend, policy)
    raise AttestationError(f"no verifier for attestation backend {backend!r}")
