"""Hardware evidence at the key broker: an SEV-SNP report or a TDX/SGX quote, checked against the owner's policy.

The hardware signs two twofold values besides its own measurements:

- REPORT_DATA = :func:`~twofold.crypto.evidence.hardware_report_data` (the broker's nonce, the enclave's
  ephemeral key and the broker identity it pins), so the report answers this challenge, for this key and broker;
- on SEV-SNP and TDX, the launch binding (HOST_DATA, 32 bytes; MRCONFIGID, 48 bytes:
  :func:`~twofold.crypto.evidence.launch_binding`) of twofold's TCB measurement and that identity. On TDX the
  binding may instead be extended into RTMR3 at start: the evidence then carries RTMR3's event log, which must
  replay to the quote's RTMR3 and end with the binding. A confidential
  VM's launch measurement covers firmware, kernel and initrd, not the twofold code that runs later; the policy's
  platform rule lists launch measurements of images that run only the code the launch binding names, and the
  binding says which twofold measurement that is. Under Gramine on SGX, MRENCLAVE covers the trusted files (the
  TCB among them), so MRENCLAVE *is* twofold's measurement there.

The verification time is the broker's clock; the collateral is the owner's local copy (``attest collateral``).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from pathlib import Path

from twofold.crypto.evidence import Evidence, hardware_report_data, launch_binding, replay_rtmr
from twofold.errors import AttestationError
from twofold.kbs.dcap import DcapClaims, DcapPolicy, verify_dcap
from twofold.kbs.policy import PlatformRule, Policy
from twofold.kbs.snp import SnpClaims, SnpPolicy, verify_snp
from twofold.kbs.snp_certs import SnpCollateral
from twofold.kbs.verifiers import VerifiedClaims

HARDWARE = ("sev-snp", "tdx", "sgx")


def quote_of(evidence: Evidence) -> bytes:
    try:
        raw = base64.b64decode(evidence.quote, validate=True)
    except (binascii.Error, ValueError):
        raise AttestationError("hardware evidence carries no readable quote") from None
    if not raw:
        raise AttestationError("hardware evidence carries no quote")
    return raw


def _hex(data: bytes | None) -> str | None:
    return None if data is None else data.hex()


def _check_rtmr_binding(claims: DcapClaims, event_log: tuple[str, ...], binding: bytes) -> None:
    """The TD bound twofold's measurement through RTMR3: its event log replays to the quote's RTMR3, and the
    binding is the last event (nothing was extended after twofold's code was named)."""
    if not event_log:
        raise AttestationError("the TD binds twofold's measurement neither in MRCONFIGID nor in RTMR3")
    try:
        replayed = replay_rtmr(event_log)
    except ValueError:
        raise AttestationError("the TD's RTMR3 event log is malformed") from None
    if replayed != claims.rtmr3:
        raise AttestationError("the TD's RTMR3 event log does not replay to the quote's RTMR3")
    if event_log[-1] != binding.hex():
        raise AttestationError("the TD's RTMR3 does not end with this twofold measurement and broker")


def verify_platform(backend: str, raw: bytes, rule: PlatformRule, *, at: datetime | None = None,
                    report_data: bytes | None = None, binding: bytes | None = None,
                    event_log: tuple[str, ...] = ()) -> SnpClaims | DcapClaims:
    """Verify hardware evidence against a platform rule (and, when given, the expected report data and launch
    binding); the claims, or an AttestationError naming the first reason for refusal. A rule without launch
    measurements checks none (``attest verify`` without a policy; a policy file always lists them)."""
    moment = at or datetime.now(UTC)
    if backend == "sev-snp":
        policy = SnpPolicy(measurements=rule.measurements or None, min_tcb=rule.min_tcb or None,
                           min_guest_svn=rule.min_svn or None, vmpl=rule.vmpl, report_data=report_data,
                           host_data=binding)
        return verify_snp(raw, SnpCollateral.load(Path(rule.collateral)), at=moment, policy=policy)
    if backend == "tdx":
        claims = verify_dcap(raw, rule.collateral, at=moment, policy=DcapPolicy(
            accepted_tcb_statuses=rule.tcb_statuses, allowed_mrtds=rule.measurements or None,
            expected_rtmrs=rule.rtmrs or None, expected_report_data=_hex(report_data), backends=("tdx",)))
        if binding is not None and (claims.mr_config_id or "") != binding.hex():
            _check_rtmr_binding(claims, event_log, binding)
        return claims
    if backend == "sgx":
        return verify_dcap(raw, rule.collateral, at=moment, policy=DcapPolicy(
            accepted_tcb_statuses=rule.tcb_statuses, allowed_mrenclaves=rule.measurements or None,
            allowed_mrsigners=rule.signers or None, isv_prodid=rule.product_id,
            min_isv_svn=rule.min_svn or None, expected_report_data=_hex(report_data), backends=("sgx",)))
    raise AttestationError(f"{backend!r} is not a hardware backend ({', '.join(HARDWARE)})")


class HardwareVerifier:
    """The broker's verifier for one hardware backend (see the module docstring for what it checks)."""

    def __init__(self, backend: str, policy: Policy) -> None:
        self.backend, self._rule = backend, policy.platform(backend)

    def verify(self, evidence: Evidence, nonce: str, public_key_raw: bytes) -> VerifiedClaims:
        if evidence.backend != self.backend:
            raise AttestationError("evidence names another backend than its verifier")
        expected = hardware_report_data(nonce, public_key_raw, evidence.config)
        size = {"sev-snp": 32, "tdx": 48}.get(self.backend)
        binding = launch_binding(evidence.measurement, evidence.config, size) if size else None
        claims = verify_platform(self.backend, quote_of(evidence), self._rule, report_data=expected, binding=binding,
                                 event_log=evidence.event_log)
        # Under SGX the enclave's measurement is MRENCLAVE; on a VM, the one the launch binding vouched for.
        measurement = claims.measurement if self.backend == "sgx" else evidence.measurement
        return VerifiedClaims(self.backend, measurement, evidence.config)
