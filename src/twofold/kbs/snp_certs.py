"""AMD SEV-SNP collateral: the ARK -> ASK -> VCEK (or ASVK -> VLEK) chain, the CRL, and their checks.

AMD's VCEK and VLEK certificates carry serial number 0, which RFC 5280 forbids: ``cryptography`` warns when it
loads them and announces that a future release will refuse. A certificate with a non-positive serial is
therefore read by :func:`parse_minimal`, a small DER reader of the TBSCertificate that only splits the fields;
it does no cryptography (signatures are verified by ``cryptography`` over the exact TBS bytes). Every other
certificate is loaded by ``cryptography``. Both paths give the same :class:`CertView`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from twofold.errors import AttestationError, ConfigError

Signer = Literal["vcek", "vlek"]

#: SHA-256 of the DER of AMD's public root keys (ARK), per CPU family. Milan: ``ark.pem`` of the shared
#: attestation vectors (virtee/sev ``src/certs/snp/builtin/milan/ark.pem``); Turin: the self-signed ARK-Turin in
#: ``cert_chain_turin`` (virtee/sev ``tests/certs_data``); Genoa: the self-signed ARK-Genoa that AMD's KDS serves
#: in ``/vcek/v1/Genoa/cert_chain`` (as published in google/go-sev-guest ``verify/trust``; its RSA-PSS
#: self-signature checks). An operator can re-derive each pin: ``twofold attest collateral --help``.
PINNED_ARK_SHA256: Mapping[str, str] = MappingProxyType({
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
})

RSASSA_PSS_OID = "1.2.840.113549.1.1.10"
BASIC_CONSTRAINTS_OID = "2.5.29.19"
_PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_MAX_FILE_BYTES = 1 << 20
_SEQUENCE, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID, _BOOLEAN = 0x30, 0x02, 0x03, 0x04, 0x06, 0x01
_UTC_TIME, _GENERALIZED_TIME, _EXTENSIONS_TAG, _VERSION_TAG = 0x17, 0x18, 0xA3, 0xA0
_V3 = b"\x02\x01\x02"
#: what parsing a malformed certificate raises, from this reader or from ``cryptography``
_PARSE_ERRORS = (ValueError, IndexError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.InvalidVersion)


# --- a minimal DER reader (only what a TBSCertificate needs) -------------------------------------------------

class DerError(ValueError):
    """Malformed DER."""


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at ``pos``; definite lengths only."""
    if pos + 2 > len(buf):
        raise DerError("truncated element")
    tag, length, pos = buf[pos], buf[pos + 1], pos + 2
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not supported")
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(buf):
            raise DerError("bad length")
        length, pos = int.from_bytes(buf[pos:pos + count], "big"), pos + count
    if pos + length > len(buf):
        raise DerError("element runs past its container")
    return tag, pos, pos + length


def der_children(content: bytes) -> list[tuple[int, bytes, bytes]]:
    """The elements inside a constructed value, as (tag, content, whole encoding)."""
    out, pos = [], 0
    while pos < len(content):
        tag, start, end = _tlv(content, pos)
        out.append((tag, content[start:end], content[pos:end]))
        pos = end
    return out


def der_single(der: bytes, tag: int) -> bytes:
    """The content of ``der``, which must be exactly one element with ``tag``."""
    got, start, end = _tlv(der, 0)
    if got != tag or end != len(der):
        raise DerError(f"expected one element with tag 0x{tag:02x}")
    return der[start:end]


def der_integer(content: bytes) -> int:
    if not content:
        raise DerError("empty INTEGER")
    return int.from_bytes(content, "big", signed=True)


def _der_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise DerError("bad OBJECT IDENTIFIER")
    arcs, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    top = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [top, arcs[0] - 40 * top, *arcs[1:]])


def _der_time(tag: int, content: bytes) -> datetime:
    text = content.decode("ascii", "replace")
    formats = {_UTC_TIME: "%y%m%d%H%M%SZ", _GENERALIZED_TIME: "%Y%m%d%H%M%SZ"}
    if tag not in formats:
        raise DerError("bad time")
    try:
        return datetime.strptime(text, formats[tag]).replace(tzinfo=UTC)
    except ValueError as exc:
        raise DerError("bad time") from exc


# --- one view of a certificate, whoever parsed it -------------------------------------------------------------

@dataclass(frozen=True)
class CertView:
    """The fields of an X.509 certificate that the SNP chain checks read."""

    der: bytes = field(repr=False)
    tbs: bytes = field(repr=False)
    signature_oid: str
    signature: bytes = field(repr=False)
    serial: int
    issuer: bytes = field(repr=False)  # DER of the Name
    subject: bytes = field(repr=False)
    not_before: datetime
    not_after: datetime
    public_key: PublicKeyTypes = field(repr=False)
    extensions: Mapping[str, bytes] = field(repr=False)  # dotted OID -> extnValue content
    is_ca: bool


def _is_ca(extensions: Mapping[str, bytes]) -> bool:
    raw = extensions.get(BASIC_CONSTRAINTS_OID)
    if raw is None:
        return False
    fields = der_children(der_single(raw, _SEQUENCE))
    return bool(fields) and fields[0][0] == _BOOLEAN and fields[0][1] != b"\x00"


def parse_minimal(der: bytes) -> CertView:
    """Read a certificate with the DER reader above (for AMD's serial-0 VCEK/VLEK certificates)."""
    parts = der_children(der_single(der, _SEQUENCE))
    if [p[0] for p in parts] != [_SEQUENCE, _SEQUENCE, _BIT_STRING] or parts[2][1][:1] != b"\0":
        raise DerError("not a certificate")
    (_, tbs_body, tbs), (_, alg_body, alg), (_, sig_body, _) = parts
    fields = der_children(tbs_body)
    if not fields or fields[0][0] != _VERSION_TAG or fields[0][1] != _V3:
        raise DerError("not an X.509 v3 certificate")
    fields = fields[1:]
    if len(fields) < 6 or [f[0] for f in fields[:6]] != [_INTEGER] + [_SEQUENCE] * 5 or fields[1][2] != alg:
        raise DerError("bad TBSCertificate")
    serial, _, issuer, validity, subject, spki = fields[:6]
    times = der_children(validity[1])
    alg_oid = der_children(alg_body)[:1]
    if len(times) != 2 or not alg_oid or alg_oid[0][0] != _OID:
        raise DerError("bad validity or algorithm")
    extensions = _parse_extensions(next((f[1] for f in fields[6:] if f[0] == _EXTENSIONS_TAG), None))
    try:
        public_key = serialization.load_der_public_key(spki[2])
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DerError("unsupported public key") from exc
    return CertView(der=der, tbs=tbs, signature_oid=_der_oid(alg_oid[0][1]), signature=sig_body[1:],
                    serial=der_integer(serial[1]), issuer=issuer[2], subject=subject[2],
                    not_before=_der_time(*times[0][:2]), not_after=_der_time(*times[1][:2]),
                    public_key=public_key, extensions=extensions, is_ca=_is_ca(extensions))


def _parse_extensions(explicit: bytes | None) -> Mapping[str, bytes]:
    out: dict[str, bytes] = {}
    if explicit is None:
        return MappingProxyType(out)
    for tag, content, _ in der_children(der_single(explicit, _SEQUENCE)):
        parts = der_children(content) if tag == _SEQUENCE else []
        if len(parts) not in (2, 3) or parts[0][0] != _OID or parts[-1][0] != _OCTET_STRING:
            raise DerError("bad extension")
        oid = _der_oid(parts[0][1])
        if oid in out:
            raise DerError("duplicate extension")
        out[oid] = parts[-1][1]
    return MappingProxyType(out)


def _from_cryptography(der: bytes) -> CertView:
    cert = x509.load_der_x509_certificate(der)
    extensions: dict[str, bytes] = {}
    for ext in cert.extensions:
        value = ext.value
        extensions[ext.oid.dotted_string] = value.value if isinstance(value, x509.UnrecognizedExtension) \
            else value.public_bytes()
    frozen = MappingProxyType(extensions)
    return CertView(der=der, tbs=cert.tbs_certificate_bytes, signature_oid=cert.signature_algorithm_oid.dotted_string,
                    signature=cert.signature, serial=cert.serial_number,
                    issuer=cert.issuer.public_bytes(), subject=cert.subject.public_bytes(),
                    not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                    public_key=cert.public_key(), extensions=frozen, is_ca=_is_ca(frozen))


def _serial_of(der: bytes) -> int:
    tbs = der_children(der_single(der, _SEQUENCE))[0][1]
    fields = der_children(tbs)
    return der_integer(fields[1][1] if fields and fields[0][0] == _VERSION_TAG else fields[0][1])


def load_certificate(der: bytes, what: str) -> CertView:
    """Parse ``der``: with ``cryptography``, or with :func:`parse_minimal` when its serial is not positive."""
    try:
        return parse_minimal(der) if _serial_of(der) <= 0 else _from_cryptography(der)
    except _PARSE_ERRORS as exc:
        raise AttestationError(f"the {what} certificate is malformed") from exc


# --- the chain --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifiedChain:
    family: str  # the CPU family whose pinned ARK anchors the chain
    leaf: CertView  # the VCEK or VLEK, signature and validity checked


def _check_valid_at(cert: CertView, what: str, at: datetime) -> None:
    if at < cert.not_before:
        raise AttestationError(f"the {what} certificate is not yet valid at {at.isoformat()}")
    if at > cert.not_after:
        raise AttestationError(f"the {what} certificate expired at {cert.not_after.isoformat()}")


def _check_rsa_pss(key: PublicKeyTypes, signature: bytes, data: bytes, what: str) -> None:
    """``signature`` over ``data`` is RSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt by ``key``."""
    if not isinstance(key, rsa.RSAPublicKey):
        raise AttestationError(f"the {what} is not signed with an RSA key")
    try:
        key.verify(signature, data, _PSS_SHA384, hashes.SHA384())
    except InvalidSignature:
        raise AttestationError(f"the {what} signature does not verify (RSA-PSS SHA-384)") from None


def _check_issued(child: CertView, child_what: str, parent: CertView, parent_what: str) -> None:
    if child.issuer != parent.subject:
        raise AttestationError(f"the {child_what} certificate is not issued by the {parent_what}")
    if child.signature_oid != RSASSA_PSS_OID:
        raise AttestationError(f"the {child_what} certificate is not signed with RSA-PSS")
    _check_rsa_pss(parent.public_key, child.signature, child.tbs, f"{child_what} certificate")


def _pinned_family(ark: CertView, trusted_arks: Mapping[str, str]) -> str:
    digest = hashlib.sha256(ark.der).hexdigest()
    for family, pinned in trusted_arks.items():
        if digest == pinned.lower():
            return family
    raise AttestationError(f"the ARK is not a pinned AMD root (sha256 {digest[:16]}...)")


def _load_crl(der: bytes) -> tuple[x509.CertificateRevocationList, bytes, str]:
    """The CRL with its issuer (DER) and signature OID, read eagerly: ``cryptography`` parses some lazily."""
    try:
        crl = x509.load_der_x509_crl(der)
        return crl, crl.issuer.public_bytes(), crl.signature_algorithm_oid.dotted_string
    except _PARSE_ERRORS as exc:
        raise AttestationError("the CRL is malformed") from exc


def _check_crl(der: bytes, ark: CertView, revocable: Mapping[str, CertView], at: datetime) -> None:
    crl, issuer, signature_oid = _load_crl(der)
    if issuer != ark.subject or signature_oid != RSASSA_PSS_OID:
        raise AttestationError("the CRL is not issued by the ARK with RSA-PSS")
    _check_rsa_pss(ark.public_key, crl.signature, crl.tbs_certlist_bytes, "CRL")
    try:  # signed by the ARK from here on; still, nothing below may escape as anything but AttestationError
        last_update, next_update = crl.last_update_utc, crl.next_update_utc
        revoked = {what: crl.get_revoked_certificate_by_serial_number(cert.serial) for what, cert in revocable.items()}
    except _PARSE_ERRORS as exc:
        raise AttestationError("the CRL is malformed") from exc
    if at < last_update:
        raise AttestationError(f"the CRL is not yet valid at {at.isoformat()}")
    if next_update is None or at > next_update:
        raise AttestationError("the CRL expired (its next update is past)")
    for what, entry in revoked.items():
        if entry is not None:
            raise AttestationError(f"the {what} certificate is revoked by the CRL (serial {revocable[what].serial})")


def verify_chain(collateral: SnpCollateral, at: datetime, trusted_arks: Mapping[str, str]) -> VerifiedChain:
    """Check ARK (pinned, self-signed) -> ASK -> VCEK/VLEK, every validity period at ``at``, and the CRL."""
    leaf_what = collateral.signer.upper()
    ark = load_certificate(collateral.ark, "ARK")
    ask = load_certificate(collateral.ask, "ASK")
    leaf = load_certificate(collateral.leaf, leaf_what)
    family = _pinned_family(ark, trusted_arks)
    _check_issued(ark, "ARK", ark, "ARK itself")
    _check_issued(ask, "ASK", ark, "ARK")
    _check_issued(leaf, leaf_what, ask, "ASK")
    if not (ark.is_ca and ask.is_ca):
        raise AttestationError("the ARK or ASK certificate is not a CA")
    for cert, what in ((ark, "ARK"), (ask, "ASK"), (leaf, leaf_what)):
        _check_valid_at(cert, what, at)
    if collateral.crl is not None:
        _check_crl(collateral.crl, ark, {"ASK": ask, leaf_what: leaf}, at)
    return VerifiedChain(family=family, leaf=leaf)


# --- the directory the owner fills --------------------------------------------------------------------------------

_ARK_NAMES = ("ark.pem", "ark.der")
_ASK_NAMES = ("ask.pem", "ask.der", "asvk.pem", "asvk.der")
_CHAIN_NAMES = ("cert_chain", "cert_chain.pem", "cert_chain_*", "ask-ark*.pem")
_LEAF_NAMES: Mapping[Signer, tuple[str, ...]] = {"vcek": ("vcek.der", "vcek_*.der", "vcek-*.der"),
                                                 "vlek": ("vlek.der", "vlek_*.der", "vlek-*.der")}
_CRL_NAMES = ("crl.der", "crl.pem")


def _find(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({path for pattern in patterns for path in directory.glob(pattern) if path.is_file()})


def _read(path: Path) -> bytes:
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise ConfigError(f"{path.name} is larger than {_MAX_FILE_BYTES} bytes")
    return path.read_bytes()


def _certs_der(path: Path) -> list[bytes]:
    """DER of every certificate in a PEM or DER file (CA certificates only: they load with ``cryptography``)."""
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except _PARSE_ERRORS as exc:
        raise ConfigError(f"{path.name} holds no readable certificate") from exc
    return [cert.public_bytes(serialization.Encoding.DER) for cert in certs]


def _one(found: list[Path], what: str, directory: Path) -> Path | None:
    if len(found) > 1:
        raise ConfigError(f"{directory} holds several {what} files: {', '.join(p.name for p in found)}")
    return found[0] if found else None


def _ark_and_ask(directory: Path) -> tuple[bytes, bytes]:
    arks: set[bytes] = set()
    asks: set[bytes] = set()
    for path in _find(directory, _ARK_NAMES + _ASK_NAMES + _CHAIN_NAMES):
        for der in _certs_der(path):
            cert = x509.load_der_x509_certificate(der)
            (arks if cert.issuer == cert.subject else asks).add(der)
    if len(arks) != 1 or len(asks) != 1:
        raise ConfigError(f"{directory} must hold exactly one ARK and one ASK (found {len(arks)} and {len(asks)})")
    return arks.pop(), asks.pop()


@dataclass(frozen=True)
class SnpCollateral:
    """The certificates (DER) that vouch for an SNP report: ARK, ASK (or ASVK), VCEK or VLEK, optional CRL."""

    ark: bytes = field(repr=False)
    ask: bytes = field(repr=False)
    leaf: bytes = field(repr=False)
    signer: Signer = "vcek"
    crl: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.signer not in ("vcek", "vlek"):
            raise ValueError("signer must be 'vcek' or 'vlek'")

    @classmethod
    def load(cls, directory: Path) -> SnpCollateral:
        """Read a collateral directory. Accepted names (PEM or DER unless said):

        - ARK: ``ark.pem``/``ark.der``; ASK: ``ask.pem``/``ask.der``, or ``asvk.pem``/``asvk.der`` for a VLEK;
          or instead a PEM chain with ASK and ARK: ``cert_chain``, ``cert_chain.pem``, ``cert_chain_*``,
          ``ask-ark*.pem`` (the self-signed certificate is taken as the ARK);
        - exactly one signing key certificate, DER: ``vcek.der``, ``vcek_*.der``, ``vcek-*.der`` or the same
          with ``vlek``;
        - optional CRL: ``crl.der`` or ``crl.pem``.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError(f"{directory} is not a directory")
        ark, ask = _ark_and_ask(directory)
        leaves = {signer: _find(directory, names) for signer, names in _LEAF_NAMES.items()}
        found = leaves["vcek"] + leaves["vlek"]
        leaf = _one(found, "VCEK/VLEK", directory)
        if leaf is None:
            raise ConfigError(f"{directory} holds no vcek.der or vlek.der")
        signer: Signer = "vcek" if leaves["vcek"] else "vlek"
        crl_path = _one(_find(directory, _CRL_NAMES), "CRL", directory)
        return cls(ark=ark, ask=ask, leaf=_read(leaf), signer=signer, crl=_crl_der(crl_path))


def _crl_der(path: Path | None) -> bytes | None:
    if path is None:
        return None
    data = _read(path)
    if b"-----BEGIN" not in data:
        return data
    try:
        return x509.load_pem_x509_crl(data).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise ConfigError(f"{path.name} holds no readable CRL") from exc
