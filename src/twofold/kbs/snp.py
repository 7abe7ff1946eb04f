"""AMD SEV-SNP attestation: parse an ATTESTATION_REPORT and verify it against AMD's chain and the owner's policy.

Pure verification: no network, and no clock unless ``at`` is left out. The layout is the SEV-SNP Firmware ABI
specification's Table "ATTESTATION_REPORT Structure" (versions 2 and 3: 1184 bytes, bytes [0:0x2A0] signed with
ECDSA P-384 SHA-384, r and s 72-byte little-endian at 0x2A0 and 0x2E8). The chain is checked by
:mod:`twofold.kbs.snp_certs`.

The VCEK's TCB extensions are 1.3.6.1.4.1.3704.1.3.1 bootloader, .3.2 TEE, .3.3 SNP, .3.8 microcode and, on
Turin, .3.9 FMC (the real Milan VCEKs hold .3.3 = the SNP byte of the report's REPORTED_TCB, 8 and 5).
"""

from __future__ import annotations

import hmac
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from twofold.errors import AttestationError
from twofold.kbs.snp_certs import (
    PINNED_ARK_SHA256,
    CertView,
    DerError,
    SnpCollateral,
    der_integer,
    der_single,
    verify_chain,
)

__all__ = ["PINNED_ARK_SHA256", "SnpClaims", "SnpCollateral", "SnpPolicy", "SnpReport", "TcbVersion",
           "parse_report", "verify_snp"]

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
_SIG_R, _SIG_S, _SIG_LEN = 0x2A0, 0x2E8, 72
SUPPORTED_VERSIONS = (2, 3)
ECDSA_P384_SHA384 = 1
_SIGNING_KEYS = {0: "vcek", 1: "vlek", 7: "none"}
#: CPUID family (extended family + family) of each CPU family AMD roots a chain for.
FAMILY_CPUID = MappingProxyType({"Milan": 0x19, "Genoa": 0x19, "Turin": 0x1A})
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
_AMD_OID = "1.3.6.1.4.1.3704.1"
TCB_OIDS = MappingProxyType({"bootloader": f"{_AMD_OID}.3.1", "tee": f"{_AMD_OID}.3.2", "snp": f"{_AMD_OID}.3.3",
                             "microcode": f"{_AMD_OID}.3.8", "fmc": f"{_AMD_OID}.3.9"})
HWID_OID = f"{_AMD_OID}.4"
_MEASUREMENT_HEX = re.compile(r"[0-9a-f]{96}")


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION: security patch levels of each firmware component (``fmc`` exists on Turin only)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: bytes, *, turin: bool) -> TcbVersion:
        """Milan/Genoa: bytes 0, 1, 6, 7; Turin (family 1Ah): FMC, bootloader, TEE, SNP in bytes 0-3, byte 7."""
        if turin:
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def as_dict(self) -> dict[str, int]:
        return {name: value for name in TCB_COMPONENTS if (value := getattr(self, name)) is not None}


@dataclass(frozen=True)
class SnpReport:
    """A parsed ATTESTATION_REPORT (not yet verified)."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    signing_key: str  # "vcek", "vlek" or "none"
    author_key_en: bool
    mask_chip_id: bool
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    chip_id: bytes
    committed_tcb: TcbVersion
    launch_tcb: TcbVersion
    cpuid_family: int | None = None  # version 3 only
    cpuid_model: int | None = None
    cpuid_stepping: int | None = None

    @property
    def abi_major(self) -> int:
        return (self.policy >> 8) & 0xFF

    @property
    def abi_minor(self) -> int:
        return self.policy & 0xFF

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy >> 16 & 1)

    @property
    def migrate_ma_allowed(self) -> bool:
        return bool(self.policy >> 18 & 1)

    @property
    def debug_allowed(self) -> bool:
        return bool(self.policy >> 19 & 1)

    @property
    def single_socket(self) -> bool:
        return bool(self.policy >> 20 & 1)


def _cpuid(raw: bytes, version: int) -> tuple[int | None, int | None, int | None]:
    if version < 3:
        return None, None, None
    family, model, stepping = raw[0x188], raw[0x189], raw[0x18A]
    if family not in FAMILY_CPUID.values():
        raise AttestationError(f"cannot decode the TCB of CPU family 0x{family:02x} (known: 19h, 1Ah)")
    return family, model, stepping


def parse_report(raw: bytes) -> SnpReport:
    """Parse an ATTESTATION_REPORT of version 2 or 3; refuse any other size, version or signature algorithm."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("an SNP report is bytes")
    raw = bytes(raw)
    if len(raw) != REPORT_SIZE:
        raise AttestationError(f"the SNP report is {len(raw)} bytes, expected {REPORT_SIZE}")
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    if version not in SUPPORTED_VERSIONS:
        raise AttestationError(f"unsupported SNP report version {version} (supported: 2, 3)")
    vmpl, algo, _, platform_info, key_info = struct.unpack_from("<IIQQI", raw, 0x30)
    if algo != ECDSA_P384_SHA384:
        raise AttestationError(f"unsupported SNP signature algorithm {algo} (only 1, ECDSA P-384 SHA-384)")
    if vmpl > 3:
        raise AttestationError(f"the report's VMPL {vmpl} is out of range")
    signing_key = _SIGNING_KEYS.get((key_info >> 2) & 7)
    if signing_key is None:
        raise AttestationError(f"the report's signing key selector {(key_info >> 2) & 7} is reserved")
    cpuid = _cpuid(raw, version)
    turin = cpuid[0] == FAMILY_CPUID["Turin"]

    def tcb(offset: int) -> TcbVersion:
        return TcbVersion.decode(raw[offset:offset + 8], turin=turin)

    return SnpReport(
        version=version, guest_svn=guest_svn, policy=policy, family_id=raw[0x10:0x20], image_id=raw[0x20:0x30],
        vmpl=vmpl, signature_algo=algo, current_tcb=tcb(0x38), platform_info=platform_info,
        signing_key=signing_key, author_key_en=bool(key_info & 1), mask_chip_id=bool(key_info & 2),
        report_data=raw[0x50:0x90], measurement=raw[0x90:0xC0], host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110], author_key_digest=raw[0x110:0x140], report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180], reported_tcb=tcb(0x180), chip_id=raw[0x1A0:0x1E0],
        committed_tcb=tcb(0x1E0), launch_tcb=tcb(0x1F0),
        cpuid_family=cpuid[0], cpuid_model=cpuid[1], cpuid_stepping=cpuid[2])


@dataclass(frozen=True)
class SnpPolicy:
    """The owner's requirements on a verified report; ``None`` leaves an item unchecked.

    ``measurements``: allowed launch digests (hex); ``allow_debug``: accept guests whose policy allows debugging
    (never in production); ``min_tcb``: minimum per component of the REPORTED_TCB (``bootloader``, ``tee``, ``snp``,
    ``microcode``, ``fmc``); ``vmpl``: the exact VMPL, ``max_vmpl``: the highest accepted; ``report_data`` (64
    bytes) and ``host_data`` (32 bytes): exact expected values.
    """

    measurements: Iterable[str] | None = None
    allow_debug: bool = False
    min_tcb: Mapping[str, int] | None = None
    min_guest_svn: int | None = None
    vmpl: int | None = None
    max_vmpl: int | None = None
    report_data: bytes | None = None
    host_data: bytes | None = None

    def __post_init__(self) -> None:
        if self.measurements is not None:
            allowed = frozenset(m.lower() for m in self.measurements)
            if not all(_MEASUREMENT_HEX.fullmatch(m) for m in allowed):
                raise ValueError("measurements must be 48-byte hex digests")
            object.__setattr__(self, "measurements", allowed)
        if self.min_tcb is not None:
            if not set(self.min_tcb) <= set(TCB_COMPONENTS):
                raise ValueError(f"min_tcb components are {', '.join(TCB_COMPONENTS)}")
            object.__setattr__(self, "min_tcb", MappingProxyType(dict(self.min_tcb)))
        for name, size in (("report_data", 64), ("host_data", 32)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, bytes) or len(value) != size):
                raise ValueError(f"{name} must be {size} bytes")

    def check(self, report: SnpReport) -> None:
        """Raise :class:`AttestationError` naming the first requirement ``report`` violates."""
        if report.debug_allowed and not self.allow_debug:
            raise AttestationError(f"the guest policy allows debugging (policy 0x{report.policy:x})")
        if self.measurements is not None and report.measurement.hex() not in self.measurements:
            raise AttestationError(f"measurement {report.measurement[:8].hex()}... is not allowed by the policy")
        self._check_tcb(report.reported_tcb)
        if self.min_guest_svn is not None and report.guest_svn < self.min_guest_svn:
            raise AttestationError(f"guest_svn {report.guest_svn} is below the minimum {self.min_guest_svn}")
        if self.vmpl is not None and report.vmpl != self.vmpl:
            raise AttestationError(f"the report's VMPL {report.vmpl} is not the required VMPL {self.vmpl}")
        if self.max_vmpl is not None and report.vmpl > self.max_vmpl:
            raise AttestationError(f"the report's VMPL {report.vmpl} is above the maximum {self.max_vmpl}")
        if self.report_data is not None and not hmac.compare_digest(report.report_data, self.report_data):
            raise AttestationError(f"report_data {report.report_data[:8].hex()}... is not the expected value")
        if self.host_data is not None and not hmac.compare_digest(report.host_data, self.host_data):
            raise AttestationError(f"host_data {report.host_data[:8].hex()}... is not the expected value")

    def _check_tcb(self, tcb: TcbVersion) -> None:
        reported = tcb.as_dict()
        for name, minimum in (self.min_tcb or {}).items():
            if name not in reported:
                raise AttestationError(f"the reported TCB has no {name} component to compare with the minimum")
            if reported[name] < minimum:
                raise AttestationError(f"the reported TCB {name}={reported[name]} is below the minimum {minimum}")


@dataclass(frozen=True)
class SnpClaims:
    """What a verified report says, for the broker's policy and its log."""

    backend: str
    measurement: str
    report_data: str
    host_data: str
    chip_id: str
    reported_tcb: dict[str, int]
    policy: int
    version: int
    vmpl: int
    debug: bool
    signer: str  # "vcek" or "vlek"
    family: str  # "Milan", "Turin", ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able dict of the claims."""
        return asdict(self)


def _check_family(report: SnpReport, family: str) -> None:
    expected = FAMILY_CPUID.get(family)
    if expected is None:
        raise AttestationError(f"the ARK's CPU family {family!r} is not one this verifier decodes")
    if report.cpuid_family is None and expected == FAMILY_CPUID["Turin"]:
        raise AttestationError("a version 2 report cannot be decoded for Turin (its TCB layout needs version 3)")
    if report.cpuid_family is not None and report.cpuid_family != expected:
        raise AttestationError(f"the report's CPU family 0x{report.cpuid_family:02x} is not {family}'s")


def _check_signature(raw: bytes, leaf: CertView, signer: str) -> None:
    key = leaf.public_key
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise AttestationError(f"the {signer.upper()} key is not ECDSA P-384")
    r = int.from_bytes(raw[_SIG_R:_SIG_R + _SIG_LEN], "little")
    s = int.from_bytes(raw[_SIG_S:_SIG_S + _SIG_LEN], "little")
    try:
        key.verify(encode_dss_signature(r, s), raw[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise AttestationError(f"the report signature does not verify with the {signer.upper()}") from None


def _check_tcb_extensions(report: SnpReport, leaf: CertView, signer: str) -> None:
    for name, value in report.reported_tcb.as_dict().items():
        extension = leaf.extensions.get(TCB_OIDS[name])
        if extension is None:
            raise AttestationError(f"the {signer.upper()} has no {name} TCB extension")
        try:
            certified = der_integer(der_single(extension, 0x02))
        except DerError:
            raise AttestationError(f"the {signer.upper()} {name} TCB extension is malformed") from None
        if certified != value:
            raise AttestationError(f"the {signer.upper()} TCB {name}={certified} does not match the report's "
                                   f"reported_tcb {name}={value}")


def _check_hwid(report: SnpReport, leaf: CertView, family: str) -> None:
    if report.mask_chip_id:
        raise AttestationError("the report masks its chip_id, so it cannot be bound to the VCEK")
    hwid = leaf.extensions.get(HWID_OID)
    size = 8 if family == "Turin" else 64  # a Turin VCEK's hwid is 8 bytes; the report pads it with zeros
    if hwid is None or len(hwid) != size or hwid.ljust(64, b"\0") != report.chip_id:
        raise AttestationError(f"the VCEK hwid does not match the report's chip_id ({report.chip_id[:8].hex()}...)")


def verify_snp(raw: bytes, collateral: SnpCollateral, *, at: datetime | None = None,
               policy: SnpPolicy | None = None, trusted_arks: Mapping[str, str] | None = None) -> SnpClaims:
    """Verify an SNP report: the chain to a pinned AMD root, the report's signature, TCB and chip binding, then
    ``policy`` (default: :class:`SnpPolicy()`, which refuses debug guests). Raises :class:`AttestationError`.

    ``at`` (timezone-aware) is the time certificates and CRL are checked at; default now. ``trusted_arks`` maps a
    CPU family to an ARK's DER SHA-256 and defaults to :data:`PINNED_ARK_SHA256` (Milan, Genoa, Turin).
    It exists so tests can anchor chains of their own: production code leaves it out.
    """
    report = parse_report(raw)
    moment = datetime.now(UTC) if at is None else at
    if moment.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    chain = verify_chain(collateral, moment, PINNED_ARK_SHA256 if trusted_arks is None else trusted_arks)
    _check_family(report, chain.family)
    if report.signing_key != collateral.signer:
        raise AttestationError(f"the report names its signing key {report.signing_key.upper()}, but the "
                               f"collateral holds a {collateral.signer.upper()}")
    _check_signature(bytes(raw), chain.leaf, collateral.signer)
    _check_tcb_extensions(report, chain.leaf, collateral.signer)
    if collateral.signer == "vcek":
        _check_hwid(report, chain.leaf, chain.family)
    (policy or SnpPolicy()).check(report)
    return SnpClaims(backend="sev-snp", measurement=report.measurement.hex(), report_data=report.report_data.hex(),
                     host_data=report.host_data.hex(), chip_id=report.chip_id.hex(),
                     reported_tcb=report.reported_tcb.as_dict(), policy=report.policy, version=report.version,
                     vmpl=report.vmpl, debug=report.debug_allowed, signer=collateral.signer, family=chain.family)
