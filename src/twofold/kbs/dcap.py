"""Intel TDX and SGX DCAP quote verification for the key broker: pure, no network, the time is an input.

:func:`verify_dcap` checks a quote with ``dcap-qvl`` (Phala Network) against Intel's collateral: the PCK
certificate chain to Intel's SGX root CA (pinned inside dcap-qvl), the root CA and PCK CRLs, the signed TCB info
and QE identity, the QE report and the quote signature. It then maps the result to :class:`DcapClaims` and
applies a :class:`DcapPolicy` (by default: TCB status ``UpToDate`` only, no debug TDs or enclaves).

The collateral (``QuoteCollateralV3`` JSON, as ``dcap_qvl.get_collateral`` or a PCCS returns it) is fetched by
someone else, ahead of time: this module never opens a socket. Every refusal raises
:class:`~twofold.errors.AttestationError` with its own reason. :func:`quote_tee` reads the header only, for
dispatch, and needs no dcap-qvl.

dcap-qvl is the optional extra ``twofold[tee]``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from twofold.errors import AttestationError

TEE_TYPES = {0x00000000: "sgx", 0x00000081: "tdx"}
QUOTE_VERSIONS = {"sgx": (3, 4, 5), "tdx": (4, 5)}
HEADER_LEN = 48
MAX_QUOTE_BYTES = 64 * 1024
MAX_COLLATERAL_BYTES = 4 * 1024 * 1024
COLLATERAL_FILE = "collateral.json"
TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                "OutOfDate", "OutOfDateConfigurationNeeded", "TDRelaunchAdvised",
                "TDRelaunchAdvisedConfigurationNeeded")
# attribute bits (TDX TD_ATTRIBUTES; SGX SECS.ATTRIBUTES.FLAGS), little-endian 64-bit words
TD_ATTRIBUTE_BITS = {0: "DEBUG", 28: "SEPT_VE_DISABLE", 30: "PKS", 31: "KL", 63: "PERFMON"}
SGX_ATTRIBUTE_BITS = {0: "INIT", 1: "DEBUG", 2: "MODE64BIT", 4: "PROVISIONKEY", 5: "EINITTOKEN_KEY", 7: "KSS",
                      10: "AEXNOTIFY"}
_TDX_PINS = ("allowed_mrtds", "expected_rtmrs")
_SGX_PINS = ("allowed_mrenclaves", "allowed_mrsigners", "isv_prodid", "min_isv_svn")


# ---------------------------------------------------------------------------------------------------- header


@dataclass(frozen=True)
class QuoteHeader:
    """The unverified header of a DCAP quote: what to dispatch on, never what to trust."""

    tee: str  # "tdx" or "sgx"
    version: int
    attestation_key_type: int


def quote_header(quote: bytes) -> QuoteHeader:
    """Read a quote's version, attestation key type and TEE type (0x00 SGX, 0x81 TDX) without verifying."""
    _check_quote_bytes(quote)
    if len(quote) < HEADER_LEN:
        raise AttestationError(f"not a DCAP quote: {len(quote)} bytes is shorter than its {HEADER_LEN}-byte header")
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    tee = TEE_TYPES.get(tee_type)
    if tee is None:
        raise AttestationError(f"not a DCAP quote: unknown TEE type 0x{tee_type:08x} (expected 0x00 SGX, 0x81 TDX)")
    if version not in QUOTE_VERSIONS[tee]:
        raise AttestationError(f"unsupported {tee.upper()} quote version {version} "
                               f"(supported: {', '.join(map(str, QUOTE_VERSIONS[tee]))})")
    return QuoteHeader(tee, version, key_type)


def quote_tee(quote: bytes) -> str:
    """The TEE a quote claims to come from, "tdx" or "sgx" (header only, unverified: for dispatch)."""
    return quote_header(quote).tee


def _check_quote_bytes(quote: object) -> None:
    if not isinstance(quote, bytes | bytearray | memoryview):
        raise TypeError(f"a DCAP quote is bytes, not {type(quote).__name__}")
    if len(quote) > MAX_QUOTE_BYTES:
        raise AttestationError(f"DCAP quote refused: {len(quote)} bytes is over the {MAX_QUOTE_BYTES}-byte bound")


# ---------------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class DcapClaims:
    """What a verified quote says. TDX fields are None for SGX and SGX fields None for TDX; hex is lower-case."""

    backend: str
    quote_version: int
    tcb_status: str
    advisories: tuple[str, ...]
    report_data: str  # 64 bytes
    debug: bool
    attribute_flags: tuple[str, ...]  # the named bits set in td_attributes (TDX) or attributes (SGX)
    # TDX
    mrtd: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    rtmr3: str | None = None
    td_attributes: str | None = None
    xfam: str | None = None
    mr_config_id: str | None = None
    mr_owner: str | None = None
    mr_owner_config: str | None = None
    # SGX
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prodid: int | None = None
    isv_svn: int | None = None
    attributes: str | None = None

    @property
    def measurement(self) -> str:
        """The code identity: MRTD for TDX, MRENCLAVE for SGX (hex)."""
        value = self.mrtd if self.backend == "tdx" else self.mrenclave
        if value is None:
            raise AttestationError(f"{self.backend} claims carry no measurement")
        return value

    @property
    def rtmrs(self) -> tuple[str | None, ...]:
        """RTMR0..3 (TDX; all None for SGX)."""
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    def describe(self) -> dict[str, Any]:
        """A JSON-able view for printing: the set fields, the measurement, lists for tuples."""
        out: dict[str, Any] = {"measurement": self.measurement}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def _bits(word: int, names: Mapping[int, str]) -> tuple[str, ...]:
    return tuple(name for bit, name in sorted(names.items()) if word >> bit & 1)


def _flatten(report: Mapping[str, Any]) -> dict[str, Any]:
    """TD15/TD15Ex reports nest the TD10 fields under "base"; lift them up."""
    flat = {k: v for k, v in report.items() if k != "base"}
    if isinstance(report.get("base"), Mapping):
        flat.update(_flatten(report["base"]))
    return flat


def _tdx_claims(common: dict[str, Any], r: Mapping[str, Any]) -> DcapClaims:
    word = int.from_bytes(bytes.fromhex(r["td_attributes"]), "little")
    return DcapClaims(**common, report_data=r["report_data"], debug=bool(word & 1),
                      attribute_flags=_bits(word, TD_ATTRIBUTE_BITS), mrtd=r["mr_td"],
                      rtmr0=r["rt_mr0"], rtmr1=r["rt_mr1"], rtmr2=r["rt_mr2"], rtmr3=r["rt_mr3"],
                      td_attributes=r["td_attributes"], xfam=r["xfam"], mr_config_id=r["mr_config_id"],
                      mr_owner=r["mr_owner"], mr_owner_config=r["mr_owner_config"])


def _sgx_claims(common: dict[str, Any], r: Mapping[str, Any]) -> DcapClaims:
    word = int.from_bytes(bytes.fromhex(r["attributes"])[:8], "little")
    return DcapClaims(**common, report_data=r["report_data"], debug=bool(word >> 1 & 1),
                      attribute_flags=_bits(word, SGX_ATTRIBUTE_BITS), mrenclave=r["mr_enclave"],
                      mrsigner=r["mr_signer"], isv_prodid=int(r["isv_prod_id"]), isv_svn=int(r["isv_svn"]),
                      attributes=r["attributes"])


def claims_from_report(header: QuoteHeader, verified: Mapping[str, Any]) -> DcapClaims:
    """Map dcap-qvl's verified report (its ``to_json()``, parsed) to claims; the report kind must match the TEE."""
    bodies = verified.get("report") or {}
    if len(bodies) != 1:
        raise AttestationError("DCAP quote refused: dcap-qvl returned no single report body")
    (kind, body), = bodies.items()
    report = _flatten(body)
    common = {"backend": header.tee, "quote_version": header.version, "tcb_status": str(verified["status"]),
              "advisories": tuple(str(a) for a in verified.get("advisory_ids") or ())}
    if header.tee == "tdx" and kind.startswith("TD"):
        return _tdx_claims(common, report)
    if header.tee == "sgx" and kind == "SgxEnclave":
        return _sgx_claims(common, report)
    raise AttestationError(f"DCAP quote refused: a {header.tee.upper()} header with a {kind} report body")


# ---------------------------------------------------------------------------------------------------- policy


def _hex_tuple(values: Iterable[str] | None, size: int, name: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        raise TypeError(f"{name} is a list of hex strings, not one string")
    return tuple(_hex(v, (size,), name) for v in values)


def _hex(value: str, sizes: tuple[int, ...], name: str) -> str:
    text = str(value).strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{name}: {text[:16]!r}... is not hex") from None
    if len(raw) not in sizes:
        raise ValueError(f"{name}: {len(raw)} bytes, expected {' or '.join(map(str, sizes))}")
    return text


def _names(values: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{name} is a list of names, not one string")
    return tuple(str(v).strip() for v in values)


def _statuses(values: Iterable[str]) -> tuple[str, ...]:
    out = _names(values, "accepted_tcb_statuses")
    unknown = [s for s in out if s not in TCB_STATUSES]
    if unknown:
        raise ValueError(f"unknown TCB status {unknown[0]!r} (known: {', '.join(TCB_STATUSES)}; Revoked is never "
                         "accepted)")
    return out


@dataclass(frozen=True)
class DcapPolicy:
    """What the broker accepts from a verified DCAP quote. Every field is optional.

    - ``accepted_tcb_statuses``: by default ``UpToDate`` only; list e.g. ``SWHardeningNeeded`` to accept it.
    - ``refused_advisories``: Intel advisory ids (``INTEL-SA-...``) that refuse a quote whatever its status.
    - ``allowed_mrtds``, ``expected_rtmrs`` (index 0-3 -> hex): TDX pins; ``allowed_mrenclaves``,
      ``allowed_mrsigners``, ``isv_prodid``, ``min_isv_svn``: SGX pins. None leaves that value unchecked, so a
      policy with no pin accepts any code: the caller (the release policy) must pin the measurement.
    - ``backends``: "tdx" and/or "sgx". When None, a policy that pins only one TEE's values refuses the other TEE's
      quotes (a pinned MRENCLAVE never lets an unpinned TD through).
    - ``allow_debug``: debug TDs and enclaves are refused unless True.
    - ``expected_report_data``: 64 bytes hex (exact), or 32 bytes hex compared with the first half.
    """

    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    refused_advisories: tuple[str, ...] = ()
    allowed_mrtds: tuple[str, ...] | None = None
    expected_rtmrs: Mapping[int, str] | None = field(default=None, hash=False)
    allowed_mrenclaves: tuple[str, ...] | None = None
    allowed_mrsigners: tuple[str, ...] | None = None
    isv_prodid: int | None = None
    min_isv_svn: int | None = None
    allow_debug: bool = False
    expected_report_data: str | None = None
    backends: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("accepted_tcb_statuses", _statuses(self.accepted_tcb_statuses))
        put("refused_advisories", tuple(a.upper() for a in _names(self.refused_advisories, "refused_advisories")))
        put("allowed_mrtds", _hex_tuple(self.allowed_mrtds, 48, "allowed_mrtds"))
        put("allowed_mrenclaves", _hex_tuple(self.allowed_mrenclaves, 32, "allowed_mrenclaves"))
        put("allowed_mrsigners", _hex_tuple(self.allowed_mrsigners, 32, "allowed_mrsigners"))
        if self.expected_rtmrs is not None:
            put("expected_rtmrs", MappingProxyType(_rtmrs(self.expected_rtmrs)))
        if self.expected_report_data is not None:
            put("expected_report_data", _hex(self.expected_report_data, (32, 64), "expected_report_data"))
        if self.backends is not None:
            put("backends", _names(self.backends, "backends"))
            if not set(self.backends) <= set(QUOTE_VERSIONS):
                raise ValueError(f"backends: {self.backends} (known: tdx, sgx)")

    def allowed_backends(self) -> tuple[str, ...]:
        """The TEEs this policy accepts quotes from (see ``backends``)."""
        if self.backends is not None:
            return self.backends
        tdx = any(getattr(self, n) is not None for n in _TDX_PINS)
        sgx = any(getattr(self, n) is not None for n in _SGX_PINS)
        return ("tdx",) if tdx and not sgx else ("sgx",) if sgx and not tdx else ("tdx", "sgx")

    def check(self, claims: DcapClaims) -> DcapClaims:
        """Return ``claims`` if this policy accepts them; otherwise raise AttestationError naming the violation."""
        self._check_backend(claims)
        self._check_tcb(claims)
        if claims.debug and not self.allow_debug:
            kind = "TD" if claims.backend == "tdx" else "enclave"
            raise AttestationError(f"DCAP quote refused: a debug {kind} (its memory is readable by the host); "
                                   "the policy does not allow debug")
        if claims.backend == "tdx":
            self._check_tdx(claims)
        else:
            self._check_sgx(claims)
        self._check_report_data(claims)
        return claims

    def _check_backend(self, claims: DcapClaims) -> None:
        allowed = self.allowed_backends()
        if claims.backend not in allowed:
            raise AttestationError(f"DCAP quote refused: {claims.backend.upper()} quotes are not accepted by the "
                                   f"policy (accepted: {', '.join(b.upper() for b in allowed)})")

    def _check_tcb(self, claims: DcapClaims) -> None:
        if claims.tcb_status not in self.accepted_tcb_statuses:
            advisories = f" (advisories: {', '.join(claims.advisories)})" if claims.advisories else ""
            raise AttestationError(f"DCAP quote refused: TCB status {claims.tcb_status}{advisories} is not accepted "
                                   f"by the policy (accepted: {', '.join(self.accepted_tcb_statuses)})")
        refused = [a for a in claims.advisories if a.upper() in self.refused_advisories]
        if refused:
            raise AttestationError(f"DCAP quote refused: the platform is affected by advisory {refused[0]}, which "
                                   "the policy refuses")

    def _check_tdx(self, claims: DcapClaims) -> None:
        if self.allowed_mrtds is not None and claims.mrtd not in self.allowed_mrtds:
            raise AttestationError(f"DCAP quote refused: MRTD {str(claims.mrtd)[:16]}... is not one the policy "
                                   "allows")
        for index, expected in (self.expected_rtmrs or {}).items():
            if claims.rtmrs[index] != expected:
                raise AttestationError(f"DCAP quote refused: RTMR{index} does not match the policy")

    def _check_sgx(self, claims: DcapClaims) -> None:
        if self.allowed_mrenclaves is not None and claims.mrenclave not in self.allowed_mrenclaves:
            raise AttestationError(f"DCAP quote refused: MRENCLAVE {str(claims.mrenclave)[:16]}... is not one the "
                                   "policy allows")
        if self.allowed_mrsigners is not None and claims.mrsigner not in self.allowed_mrsigners:
            raise AttestationError(f"DCAP quote refused: MRSIGNER {str(claims.mrsigner)[:16]}... is not one the "
                                   "policy allows")
        if self.isv_prodid is not None and claims.isv_prodid != self.isv_prodid:
            raise AttestationError(f"DCAP quote refused: ISVPRODID {claims.isv_prodid} is not the policy's "
                                   f"{self.isv_prodid}")
        if self.min_isv_svn is not None and (claims.isv_svn or 0) < self.min_isv_svn:
            raise AttestationError(f"DCAP quote refused: ISVSVN {claims.isv_svn} is below the policy's minimum "
                                   f"{self.min_isv_svn}")

    def _check_report_data(self, claims: DcapClaims) -> None:
        expected = self.expected_report_data
        if expected is not None and claims.report_data[:len(expected)] != expected:
            raise AttestationError("DCAP quote refused: report_data does not match the expected value (the quote "
                                   "was made for another key or nonce)")


def _rtmrs(expected: Mapping[int, str]) -> dict[int, str]:
    out = {}
    for index, value in expected.items():
        if int(index) not in range(4):
            raise ValueError(f"expected_rtmrs: index {index} (RTMRs are 0-3)")
        out[int(index)] = _hex(value, (48,), f"expected_rtmrs[{index}]")
    return out


# ---------------------------------------------------------------------------------------------------- collateral


def load_collateral(collateral: Path | str | Mapping[str, Any] | None, quote: bytes = b"") -> str:
    """The ``QuoteCollateralV3`` JSON text from a file, a directory holding ``collateral.json``, or a parsed dict.

    A ``str`` is always a path, never JSON text. ``quote`` only improves the message when collateral is missing.
    """
    if collateral is None:
        raise AttestationError("DCAP quote refused: no collateral given; verifying a quote needs Intel's TCB info, "
                               f"QE identity and CRLs{_for_platform(quote)} (QuoteCollateralV3 JSON, fetched ahead "
                               "of time from a PCCS or Intel PCS)")
    if isinstance(collateral, Mapping):
        return json.dumps(dict(collateral))
    if not isinstance(collateral, str | Path):
        raise TypeError(f"collateral is a path or a dict, not {type(collateral).__name__}")
    path = Path(collateral)
    if path.is_dir():
        path = path / COLLATERAL_FILE
    return _read_bounded(path)


def _read_bounded(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_COLLATERAL_BYTES + 1)
    except OSError as exc:
        raise AttestationError(f"DCAP collateral {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_COLLATERAL_BYTES:
        raise AttestationError(f"DCAP collateral {path} is over the {MAX_COLLATERAL_BYTES}-byte bound")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise AttestationError(f"DCAP collateral {path} is not UTF-8 JSON") from None


def _for_platform(quote: bytes) -> str:
    try:
        import dcap_qvl

        return f" for FMSPC {_call(dcap_qvl.parse_quote, bytes(quote)).fmspc()}"
    except (ImportError, ValueError, AttestationError):  # the FMSPC only improves the message
        return ""


# ---------------------------------------------------------------------------------------------------- verify

# (all of these lower-case needles in dcap-qvl's message -> our reason), most specific first
_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("crlexpired",), "a CRL has expired (its nextUpdate is before the verification time): fetch fresh collateral"),
    (("revocation list expired",), "a CRL has expired (its nextUpdate is before the verification time): fetch "
                                   "fresh collateral"),
    (("certrevoked",), "a certificate in the PCK chain is revoked"),
    (("tcb status is invalid: revoked",), "the platform's TCB is revoked"),
    (("certexpired",), "a certificate in the chain has expired at the verification time"),
    (("certificate expired",), "a certificate in the chain has expired at the verification time"),
    (("certnotvalidyet",), "a certificate in the chain is not yet valid at the verification time"),
    (("tcbinfo expired",), "the TCB info has expired (nextUpdate is before the verification time): fetch fresh "
                           "collateral"),
    (("tcbinfo issue date is in the future",), "the TCB info was issued after the verification time"),
    (("qe identity expired",), "the QE identity has expired (nextUpdate is before the verification time)"),
    (("qe identity issue date is in the future",), "the QE identity was issued after the verification time"),
    (("collateral expired",), "the collateral has expired at the verification time"),
    (("no matching tcb level",), "No matching TCB level: the platform's TCB is below every level in the TCB info"),
    (("tcb level mismatch",), "No matching TCB level: the platform's TCB is below every level in the TCB info"),
    (("isv enclave report signature is invalid",), "the quote signature does not verify (header, body or "
                                                   "signature altered)"),
    (("qe report hash mismatch",), "the QE report does not bind the attestation key (hash mismatch)"),
    (("signature is invalid for qe_report",), "the QE report is not signed by the PCK key"),
    (("signature is invalid for tcb_info",), "the TCB info signature does not verify (collateral altered)"),
    (("signature is invalid for qe_identity",), "the QE identity signature does not verify (collateral altered)"),
    (("fmspc mismatch",), "the collateral is for another platform (FMSPC mismatch)"),
    (("unsupported qe identity id/version",), "the collateral's QE identity is for the other TEE type"),
    (("non-sgx tcb info",), "the collateral's TCB info is for the other TEE type"),
    (("non-tdx tcb info",), "the collateral's TCB info is for the other TEE type"),
    (("mismatch", "qe "), "the quoting enclave does not match Intel's QE identity"),
    (("tdx module",), "the TDX module does not match the TCB info's TDX module identity"),
    (("unsupported dcap pck cert format",), "the quote carries no PCK certificate chain; add it to the "
                                            "collateral as pck_certificate_chain"),
    (("certification data type",), "the quote carries no PCK certificate chain; add it to the collateral as "
                                   "pck_certificate_chain"),
    (("unknown qe vendor id",), "unknown QE vendor id (not Intel's quoting enclave)"),
    (("unsupported dcap attestation key type",), "unsupported attestation key type (only ECDSA P-256)"),
    (("failed to parse root ca crl", "invalidcrlsignature"), "the root CA CRL is not signed by Intel's root CA"),
    (("failed to parse root ca crl",), "the root CA CRL is malformed"),
    (("failed to parse pck crl",), "the PCK CRL is malformed"),
    (("unknownrevocationstatus",), "the collateral's CRLs do not cover the PCK chain (wrong PCK CRL)"),
    (("invalidcrlsignature",), "a CRL is not signed by its issuer"),
    (("failed to verify certificate chain", "invalidsignatureforpublickey"), "the PCK certificate chain does not "
                                                                             "lead to Intel's SGX root CA"),
    (("failed to verify certificate chain", "unknownissuer"), "the PCK certificate chain does not lead to "
                                                              "Intel's SGX root CA"),
    (("causedasendentity",), "an issuer certificate chain in the collateral is wrong (a CA certificate where "
                             "the signer's should be)"),
    (("failed to verify certificate chain",), "a certificate chain does not verify"),
    (("chain is too short",), "a certificate chain is incomplete"),
    (("leaf certificate",), "an issuer certificate in the collateral is malformed"),
    (("failed to extract pck certificates",), "the PCK certificate chain in the quote is malformed"),
    (("unsupported quote version",), "unsupported quote version"),
    (("invalid tee type",), "unknown TEE type"),
    (("failed to decode quote",), "the quote is malformed or truncated"),
)


def dcap_reason(message: str) -> str:
    """Our reason for a dcap-qvl error message (its own first line when we know no better)."""
    low = message.lower()
    for needles, reason in _REASONS:
        if all(n in low for n in needles):
            return reason
    first = message.removeprefix("Verification failed: ").strip().splitlines()[0] if message.strip() else "?"
    return f"dcap-qvl refused it: {first[:160]}"


def _call(fn: Any, *args: Any) -> Any:
    """Call into dcap-qvl; a Rust panic (pyo3's PanicException, a BaseException) becomes a refusal."""
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise AttestationError("DCAP quote refused: dcap-qvl failed on this input (internal panic)") from None


def _qvl() -> Any:
    try:
        import dcap_qvl
    except ImportError:
        raise AttestationError("DCAP verification needs dcap-qvl: install twofold[tee]") from None
    return dcap_qvl


def _unix_seconds(at: datetime) -> int:
    if not isinstance(at, datetime):
        raise TypeError(f"at is a datetime, not {type(at).__name__}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be timezone-aware (e.g. datetime.now(timezone.utc))")
    seconds = int(at.timestamp())
    if seconds < 0:
        raise ValueError("at is before 1970")
    return seconds


def verify_dcap(quote: bytes, collateral: Path | str | Mapping[str, Any] | None, *, at: datetime,
                policy: DcapPolicy | None = None) -> DcapClaims:
    """Verify a TDX or SGX DCAP quote against Intel's collateral as of ``at``, then apply ``policy``.

    ``collateral`` is a ``QuoteCollateralV3`` JSON file, a directory holding ``collateral.json``, or the parsed
    dict (a ``str`` is a path). It may carry ``pck_certificate_chain`` for quotes that do not embed the PCK chain.
    ``policy`` defaults to :class:`DcapPolicy` (UpToDate only, no debug). Raises AttestationError on any refusal.
    """
    now = _unix_seconds(at)
    header = quote_header(quote)
    text = load_collateral(collateral, quote)
    qvl = _qvl()
    try:
        parsed = _call(qvl.QuoteCollateralV3.from_json, text)
    except ValueError as exc:
        raise AttestationError(f"DCAP collateral is not QuoteCollateralV3 JSON: {str(exc)[:160]}") from None
    try:
        verified = _call(qvl.verify, bytes(quote), parsed, now)
    except (ValueError, RuntimeError) as exc:
        raise AttestationError(f"DCAP quote refused: {dcap_reason(str(exc))}") from None
    try:
        claims = claims_from_report(header, json.loads(verified.to_json()))
    except (KeyError, TypeError, ValueError) as exc:  # a dcap-qvl whose report JSON we do not know
        raise AttestationError(f"DCAP quote refused: dcap-qvl's report is not in the expected form ({exc!r:.80})"
                               ) from None
    return (policy or DcapPolicy()).check(claims)
