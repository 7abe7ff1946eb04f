"""SEV-SNP report verification: known answers from real AMD machines (read from the shared vectors, never
copied), and a fake AMD built here with `cryptography` that plays every attack the verifier must refuse."""

from __future__ import annotations

import contextlib
import hashlib
import struct
import warnings
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from twofold.errors import AttestationError, ConfigError
from twofold.kbs.snp import (
    HWID_OID,
    PINNED_ARK_SHA256,
    REPORT_SIZE,
    TCB_OIDS,
    SnpCollateral,
    SnpPolicy,
    parse_report,
    verify_snp,
)
from twofold.kbs.snp_certs import CertView, _from_cryptography, load_certificate, parse_minimal, verify_chain

AT = datetime(2025, 1, 1, tzinfo=UTC)  # inside every real and fake certificate's validity


def _vectors() -> Path | None:
    for root in (Path(__file__).resolve().parents[2] / ".." / "shared" / "attestation-vectors",
                 Path("/work/shared/attestation-vectors")):
        if (root / "sev-snp").is_dir():
            return root / "sev-snp"
    return None


@pytest.fixture(scope="module")
def vectors() -> Path:
    found = _vectors()
    if found is None:
        pytest.skip("the shared attestation vectors are absent")
    return found


def _link(tmp_path: Path, vectors: Path, *names: str) -> Path:
    """A collateral directory whose files are links to the shared vectors (nothing is copied)."""
    for name in names:
        (tmp_path / name).symlink_to(vectors / name)
    return tmp_path


def _report_milan(vectors: Path) -> bytes:
    return bytes.fromhex((vectors / "report_milan.hex").read_text().strip())


def _flip(raw: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 1 << bit
    return bytes(out)


# --- known answers ----------------------------------------------------------------------------------------------

def test_report_milan_verifies_with_vcek_ask_ark(tmp_path, vectors):
    collateral = SnpCollateral.load(_link(tmp_path, vectors, "vcek_milan.der", "ask.pem", "ark.pem"))
    claims = verify_snp(_report_milan(vectors), collateral, at=AT)
    assert (claims.version, claims.policy, claims.family, claims.signer) == (2, 0x30000, "Milan", "vcek")
    assert claims.measurement == ("7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
                                  "3e1a0dc39b2c60bd95b9c480cd81841f")
    assert claims.report_data.startswith("d447b55d197491bf") and not claims.debug
    assert claims.reported_tcb == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert claims.describe()["backend"] == "sev-snp"
    report = parse_report(_report_milan(vectors))
    assert report.signature_algo == 1 and report.signing_key == "vcek" and report.smt_allowed
    assert report.cpuid_family is None and report.vmpl == 0


def test_attestation_milan_2_verifies_and_is_a_debug_guest(tmp_path, vectors):
    collateral = SnpCollateral.load(_link(tmp_path, vectors, "vcek-milan-2.der", "ask-ark-milan-2.pem"))
    raw = (vectors / "attestation-milan-2.bin").read_bytes()
    with pytest.raises(AttestationError, match="allows debugging"):
        verify_snp(raw, collateral, at=AT)
    claims = verify_snp(raw, collateral, at=AT, policy=SnpPolicy(allow_debug=True, report_data=bytes(
        [1, 2, 3, 4, 5]) + bytes(59)))
    assert (claims.version, claims.policy, claims.debug) == (2, 0xB0000, True)
    assert claims.measurement == ("b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
                                  "6bdf8a9ece31a5a608eb0cf2e4872b01")
    assert claims.report_data == "0102030405" + "00" * 59


def test_real_vceks_load_through_the_fallback_without_warning(vectors):
    for name in ("vcek_milan.der", "vcek-milan-2.der", "vcek_turin.der"):
        der = (vectors / name).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours = load_certificate(der, "VCEK")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = _from_cryptography(der)
        assert ours.serial == 0 and _same(ours, theirs)
    turin = parse_minimal((vectors / "vcek_turin.der").read_bytes())
    assert len(turin.extensions[HWID_OID]) == 8 and TCB_OIDS["fmc"] in turin.extensions


def _same(a: CertView, b: CertView) -> bool:
    def pub(view: CertView) -> bytes:
        return view.public_key.public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return pub(a) == pub(b) and all(getattr(a, f.name) == getattr(b, f.name)
                                    for f in fields(CertView) if f.name != "public_key")


def test_real_chain_refuses_a_flipped_body_bit_and_a_flipped_signature_bit(tmp_path, vectors):
    collateral = SnpCollateral.load(_link(tmp_path, vectors, "vcek_milan.der", "ask.pem", "ark.pem"))
    raw = _report_milan(vectors)
    for tampered in (_flip(raw, 0x90), _flip(raw, 0x2A0 + 5), _flip(raw, 0x2E8 + 70)):
        with pytest.raises(AttestationError, match="report signature does not verify with the VCEK"):
            verify_snp(tampered, collateral, at=AT)


def test_real_report_with_another_machines_vcek_is_refused(tmp_path, vectors):
    collateral = SnpCollateral.load(_link(tmp_path, vectors, "vcek-milan-2.der", "ask.pem", "ark.pem"))
    with pytest.raises(AttestationError, match="report signature does not verify"):
        verify_snp(_report_milan(vectors), collateral, at=AT)


def test_real_chain_is_checked_at_the_given_time(tmp_path, vectors):
    collateral = SnpCollateral.load(_link(tmp_path, vectors, "vcek_milan.der", "ask.pem", "ark.pem"))
    with pytest.raises(AttestationError, match="VCEK certificate expired"):
        verify_snp(_report_milan(vectors), collateral, at=datetime(2031, 1, 1, tzinfo=UTC))
    with pytest.raises(AttestationError, match="VCEK certificate is not yet valid"):
        verify_snp(_report_milan(vectors), collateral, at=datetime(2023, 1, 1, tzinfo=UTC))
    with pytest.raises(AttestationError, match="not a pinned AMD root"):
        verify_snp(_report_milan(vectors), collateral, at=AT, trusted_arks={})


def test_turin_chain_anchors_to_the_pinned_turin_ark_and_refuses_a_version_2_report(tmp_path, vectors):
    collateral = SnpCollateral.load(_link(tmp_path, vectors, "vcek_turin.der", "cert_chain_turin"))
    assert verify_chain(collateral, AT, PINNED_ARK_SHA256).family == "Turin"
    with pytest.raises(AttestationError, match="version 2 report cannot be decoded for Turin"):
        verify_snp(_report_milan(vectors), collateral, at=AT)


def test_loader_refuses_ambiguous_or_incomplete_directories(tmp_path, vectors):
    with pytest.raises(ConfigError, match="several VCEK/VLEK"):
        SnpCollateral.load(_link(tmp_path, vectors, "vcek_milan.der", "vcek-milan-2.der", "ask.pem", "ark.pem"))
    (tmp_path / "vcek-milan-2.der").unlink()
    (tmp_path / "vcek_milan.der").unlink()
    with pytest.raises(ConfigError, match=r"no vcek\.der"):
        SnpCollateral.load(tmp_path)
    (tmp_path / "two-roots").mkdir()
    with pytest.raises(ConfigError, match="exactly one ARK and one ASK"):
        SnpCollateral.load(_link(tmp_path / "two-roots", vectors, "cert_chain_turin", "ark.pem", "vcek_turin.der"))


# --- a fake AMD -------------------------------------------------------------------------------------------------

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
MILAN_TCB = bytes([3, 0, 0, 0, 0, 0, 8, 115])  # bootloader 3, tee 0, snp 8, microcode 115
TURIN_TCB = bytes([1, 4, 0, 9, 0, 0, 0, 0x4A])  # fmc 1, bootloader 4, tee 0, snp 9, microcode 0x4a
CHIP_ID = bytes(range(64))
MEASUREMENT = bytes.fromhex("ab" * 48)
NOT_BEFORE, NOT_AFTER = datetime(2024, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Not Advanced Micro Devices")])


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _int_ext(value: int) -> bytes:
    return bytes([0x02, 0x01, value]) if value < 0x80 else bytes([0x02, 0x02, 0x00, value])


@dataclass
class FakeAmd:
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    vcek_key: ec.EllipticCurvePrivateKey

    def cert(self, subject: str, issuer: str, key, signer, *, ca: bool, serial: int = 7,
             not_after: datetime = NOT_AFTER, extensions=(), rsa_padding=PSS) -> bytes:
        builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(NOT_BEFORE).not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for oid, value in extensions:
            builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), False)
        return _der(builder.sign(signer, hashes.SHA384(), rsa_padding=rsa_padding))

    @cached_property  # RSA-PSS signatures are randomized: build each CA certificate once
    def ark(self) -> bytes:
        return self.cert("ARK-Fake", "ARK-Fake", self.ark_key, self.ark_key, ca=True, serial=1)

    @cached_property
    def ask(self) -> bytes:
        return self.cert("SEV-Fake", "ARK-Fake", self.ask_key, self.ark_key, ca=True, serial=2)

    @property
    def trusted(self) -> dict[str, str]:
        return {"Milan": hashlib.sha256(self.ark).hexdigest()}

    def vcek(self, *, tcb: dict[str, int] | None = None, hwid: bytes | None = CHIP_ID, **kwargs) -> bytes:
        tcb = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115} if tcb is None else tcb
        extensions = [(TCB_OIDS[name], _int_ext(value)) for name, value in tcb.items()]
        extensions += [(HWID_OID, hwid)] if hwid is not None else []
        return self.cert("SEV-VCEK", "SEV-Fake", self.vcek_key, self.ask_key, ca=False, extensions=extensions,
                         **kwargs)

    def collateral(self, *, leaf: bytes | None = None, **kwargs) -> SnpCollateral:
        return SnpCollateral(ark=self.ark, ask=self.ask, leaf=self.vcek() if leaf is None else leaf, **kwargs)

    def crl(self, *, revoked=(), next_update: datetime = NOT_AFTER, key=None) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(_name("ARK-Fake"))
                   .last_update(NOT_BEFORE).next_update(next_update))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOT_BEFORE).build())
        crl = builder.sign(key or self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        return crl.public_bytes(serialization.Encoding.DER)

    def verify(self, raw: bytes, collateral: SnpCollateral | None = None, **kwargs):
        return verify_snp(raw, collateral or self.collateral(), at=kwargs.pop("at", AT),
                          trusted_arks=kwargs.pop("trusted_arks", self.trusted), **kwargs)


def build_report(key: ec.EllipticCurvePrivateKey, *, version: int = 2, policy: int = 0x30000, vmpl: int = 0,
                 guest_svn: int = 1, key_info: int = 0, algo: int = 1, tcb: bytes = MILAN_TCB,
                 measurement: bytes = MEASUREMENT, report_data: bytes = bytes(64), host_data: bytes = bytes(32),
                 chip_id: bytes = CHIP_ID, cpuid: tuple[int, int, int] = (0x19, 0x01, 0x01)) -> bytes:
    """A complete ATTESTATION_REPORT signed by ``key`` the way the firmware signs one."""
    body = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", body, 0, version, guest_svn, policy)
    struct.pack_into("<IIQQI", body, 0x30, vmpl, algo, int.from_bytes(tcb, "little"), 1, key_info)
    for offset, value in ((0x50, report_data), (0x90, measurement), (0xC0, host_data), (0x180, tcb),
                          (0x1A0, chip_id), (0x1E0, tcb), (0x1F0, tcb)):
        body[offset:offset + len(value)] = value
    if version >= 3:
        body[0x188:0x18B] = bytes(cpuid)
    r, s = decode_dss_signature(key.sign(bytes(body[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    body[0x2A0:0x2E8], body[0x2E8:0x330] = r.to_bytes(72, "little"), s.to_bytes(72, "little")
    return bytes(body)


@pytest.fixture(scope="module")
def amd() -> FakeAmd:
    return FakeAmd(rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048),
                   ec.generate_private_key(ec.SECP384R1()))


def test_fake_chain_is_refused_by_the_pinned_roots(amd):
    with pytest.raises(AttestationError, match="ARK is not a pinned AMD root"):
        verify_snp(build_report(amd.vcek_key), amd.collateral(), at=AT)


def test_fake_chain_verifies_only_when_the_test_passes_its_root(amd):
    claims = amd.verify(build_report(amd.vcek_key, report_data=b"\x42" * 64))
    assert (claims.family, claims.signer, claims.report_data) == ("Milan", "vcek", "42" * 64)
    assert claims.chip_id == CHIP_ID.hex() and claims.measurement == MEASUREMENT.hex()


def test_fake_leaf_parses_the_same_both_ways(amd):
    der = amd.vcek()
    assert _same(parse_minimal(der), _from_cryptography(der))


def _serial_zero(amd: FakeAmd, der: bytes) -> bytes:
    """``der`` with its serial 7 patched to 0 (as AMD issues VCEKs) and re-signed by the fake ASK."""
    out, tbs = bytearray(der), parse_minimal(der).tbs
    start = der.index(tbs)
    out[start + tbs.index(b"\xa0\x03\x02\x01\x02\x02\x01\x07") + 7] = 0  # version v3, then INTEGER 7
    signature = amd.ask_key.sign(bytes(out[start:start + len(tbs)]), PSS, hashes.SHA384())
    out[-len(signature):] = signature  # the BIT STRING that ends the certificate
    return bytes(out)


def test_a_serial_zero_vcek_verifies_through_the_fallback_parser(amd):
    leaf = _serial_zero(amd, amd.vcek())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_certificate(leaf, "VCEK").serial == 0
        claims = amd.verify(build_report(amd.vcek_key), amd.collateral(leaf=leaf, crl=amd.crl(revoked=[7])))
    assert claims.reported_tcb["microcode"] == 115
    with pytest.raises(AttestationError, match="VCEK TCB tee=2"):
        amd.verify(build_report(amd.vcek_key), amd.collateral(leaf=_serial_zero(amd, amd.vcek(
            tcb={"bootloader": 3, "tee": 2, "snp": 8, "microcode": 115}))))
    tampered = bytearray(leaf)
    tampered[leaf.index(CHIP_ID)] ^= 1  # the hwid, inside the signed TBS
    with pytest.raises(AttestationError, match="VCEK certificate signature does not verify"):
        amd.verify(build_report(amd.vcek_key), amd.collateral(leaf=bytes(tampered)))


@pytest.mark.parametrize(("report_kwargs", "policy", "reason"), [
    ({"policy": 0x30000 | 1 << 19}, SnpPolicy(), "guest policy allows debugging"),
    ({}, SnpPolicy(min_tcb={"snp": 9}), "reported TCB snp=8 is below the minimum 9"),
    ({}, SnpPolicy(min_tcb={"fmc": 1}), "reported TCB has no fmc component"),
    ({}, SnpPolicy(min_guest_svn=2), "guest_svn 1 is below the minimum 2"),
    ({}, SnpPolicy(report_data=b"\x01" * 64), "report_data 0000000000000000... is not the expected value"),
    ({}, SnpPolicy(host_data=b"\x01" * 32), "host_data 0000000000000000... is not the expected value"),
    ({}, SnpPolicy(measurements={"cd" * 48}), "measurement abababababababab... is not allowed"),
    ({"vmpl": 1}, SnpPolicy(vmpl=0), "VMPL 1 is not the required VMPL 0"),
    ({"vmpl": 2}, SnpPolicy(max_vmpl=1), "VMPL 2 is above the maximum 1"),
])
def test_each_policy_item_refuses_with_its_own_reason(amd, report_kwargs, policy, reason):
    raw = build_report(amd.vcek_key, **report_kwargs)
    with pytest.raises(AttestationError, match=reason):
        amd.verify(raw, policy=policy)


def test_a_policy_that_matches_accepts(amd):
    raw = build_report(amd.vcek_key, policy=0x30000 | 1 << 19, vmpl=1, host_data=b"\x07" * 32)
    policy = SnpPolicy(allow_debug=True, measurements={MEASUREMENT.hex().upper()}, min_tcb={"snp": 8, "tee": 0},
                       min_guest_svn=1, vmpl=1, max_vmpl=1, report_data=bytes(64), host_data=b"\x07" * 32)
    assert amd.verify(raw, policy=policy).debug


def test_policy_misuse_is_a_value_error():
    for bad in ({"measurements": {"abc"}}, {"min_tcb": {"firmware": 1}}, {"report_data": b"short"},
                {"host_data": bytes(64)}):
        with pytest.raises(ValueError):
            SnpPolicy(**bad)


def test_chip_id_must_equal_the_vcek_hwid(amd):
    with pytest.raises(AttestationError, match="VCEK hwid does not match the report's chip_id"):
        amd.verify(build_report(amd.vcek_key, chip_id=bytes(64)))
    with pytest.raises(AttestationError, match="hwid does not match"):
        amd.verify(build_report(amd.vcek_key), amd.collateral(leaf=amd.vcek(hwid=None)))
    with pytest.raises(AttestationError, match="masks its chip_id"):
        amd.verify(build_report(amd.vcek_key, key_info=0b10))


def test_vcek_tcb_extensions_must_equal_the_reported_tcb(amd):
    leaf = amd.vcek(tcb={"bootloader": 3, "tee": 1, "snp": 8, "microcode": 115})
    with pytest.raises(AttestationError, match="VCEK TCB tee=1 does not match the report's reported_tcb tee=0"):
        amd.verify(build_report(amd.vcek_key), amd.collateral(leaf=leaf))
    with pytest.raises(AttestationError, match="has no microcode TCB extension"):
        amd.verify(build_report(amd.vcek_key), amd.collateral(leaf=amd.vcek(tcb={"bootloader": 3, "tee": 0,
                                                                                  "snp": 8})))


def test_certificates_and_crl_are_checked_at_the_given_time(amd):
    raw = build_report(amd.vcek_key)
    expired = amd.collateral(leaf=amd.vcek(not_after=AT - timedelta(days=1)))
    with pytest.raises(AttestationError, match="VCEK certificate expired"):
        amd.verify(raw, expired)
    with pytest.raises(AttestationError, match="ARK certificate expired"):
        amd.verify(raw, at=NOT_AFTER + timedelta(days=1))
    assert amd.verify(raw, amd.collateral(crl=amd.crl(revoked=[99])))
    with pytest.raises(AttestationError, match="CRL expired"):
        amd.verify(raw, amd.collateral(crl=amd.crl(next_update=AT - timedelta(days=1))))
    with pytest.raises(ValueError, match="timezone-aware"):
        amd.verify(raw, at=datetime(2025, 1, 1))


def test_crl_revocations_and_forgeries_are_refused(amd):
    raw = build_report(amd.vcek_key)
    with pytest.raises(AttestationError, match=r"VCEK certificate is revoked by the CRL \(serial 7\)"):
        amd.verify(raw, amd.collateral(crl=amd.crl(revoked=[7])))
    with pytest.raises(AttestationError, match="ASK certificate is revoked"):
        amd.verify(raw, amd.collateral(crl=amd.crl(revoked=[2])))
    with pytest.raises(AttestationError, match="CRL signature does not verify"):
        amd.verify(raw, amd.collateral(crl=amd.crl(key=amd.ask_key)))
    with pytest.raises(AttestationError, match="CRL is malformed"):
        amd.verify(raw, amd.collateral(crl=b"\x30\x00"))


def test_a_broken_chain_is_refused(amd):
    raw = build_report(amd.vcek_key)
    forged_ask = amd.cert("SEV-Fake", "ARK-Fake", amd.ask_key, amd.ask_key, ca=True, serial=2)
    with pytest.raises(AttestationError, match="ASK certificate signature does not verify"):
        amd.verify(raw, replace(amd.collateral(), ask=forged_ask))
    leaf_ca = amd.cert("SEV-Fake", "ARK-Fake", amd.ask_key, amd.ark_key, ca=False, serial=2)
    with pytest.raises(AttestationError, match="ARK or ASK certificate is not a CA"):
        amd.verify(raw, replace(amd.collateral(), ask=leaf_ca))
    pkcs1 = amd.cert("SEV-VCEK", "SEV-Fake", amd.vcek_key, amd.ask_key, ca=False, rsa_padding=padding.PKCS1v15())
    with pytest.raises(AttestationError, match="VCEK certificate is not signed with RSA-PSS"):
        amd.verify(raw, amd.collateral(leaf=pkcs1))
    orphan = amd.cert("SEV-VCEK", "SEV-Other", amd.vcek_key, amd.ask_key, ca=False)
    with pytest.raises(AttestationError, match="VCEK certificate is not issued by the ASK"):
        amd.verify(raw, amd.collateral(leaf=orphan))
    with pytest.raises(AttestationError, match="VCEK certificate is malformed"):
        amd.verify(raw, amd.collateral(leaf=b"\x30\x03\x02\x01\x00"))


def test_report_framing_is_refused_with_specific_reasons(amd):
    raw = build_report(amd.vcek_key)
    with pytest.raises(AttestationError, match="is 1183 bytes, expected 1184"):
        amd.verify(raw[:-1])
    with pytest.raises(AttestationError, match="unsupported SNP report version 4"):
        amd.verify(build_report(amd.vcek_key, version=4))
    with pytest.raises(AttestationError, match="unsupported SNP signature algorithm 2"):
        amd.verify(build_report(amd.vcek_key, algo=2))
    with pytest.raises(AttestationError, match="CPU family 0x17"):
        amd.verify(build_report(amd.vcek_key, version=3, cpuid=(0x17, 0x31, 0)))
    with pytest.raises(AttestationError, match="signing key selector 3 is reserved"):
        amd.verify(build_report(amd.vcek_key, key_info=3 << 2))
    with pytest.raises(AttestationError, match="report signature does not verify"):
        amd.verify(_flip(raw, 0x90))
    with pytest.raises(TypeError):
        parse_report("not bytes")  # type: ignore[arg-type]


def test_vlek_reports_need_vlek_collateral_and_skip_the_hwid(amd):
    vlek = amd.cert("SEV-VLEK", "SEV-Fake", amd.vcek_key, amd.ask_key, ca=False, extensions=[
        (TCB_OIDS[name], _int_ext(value)) for name, value in {"bootloader": 3, "tee": 0, "snp": 8,
                                                                "microcode": 115}.items()])
    raw = build_report(amd.vcek_key, key_info=1 << 2, chip_id=bytes(64))
    assert amd.verify(raw, amd.collateral(leaf=vlek, signer="vlek")).signer == "vlek"
    with pytest.raises(AttestationError, match="names its signing key VLEK, but the collateral holds a VCEK"):
        amd.verify(raw, amd.collateral(leaf=vlek))
    with pytest.raises(AttestationError, match="names its signing key VCEK, but the collateral holds a VLEK"):
        amd.verify(build_report(amd.vcek_key), amd.collateral(leaf=vlek, signer="vlek"))
    with pytest.raises(AttestationError, match="names its signing key NONE"):
        amd.verify(build_report(amd.vcek_key, key_info=7 << 2))


def test_version_3_turin_layout_and_family_binding(amd):
    turin = {"Turin": amd.trusted["Milan"]}
    leaf = amd.vcek(tcb={"fmc": 1, "bootloader": 4, "tee": 0, "snp": 9, "microcode": 0x4A}, hwid=CHIP_ID[:8])
    raw = build_report(amd.vcek_key, version=3, tcb=TURIN_TCB, chip_id=CHIP_ID[:8] + bytes(56),
                       cpuid=(0x1A, 0x02, 0x01))
    report = parse_report(raw)
    assert (report.cpuid_family, report.cpuid_model, report.cpuid_stepping) == (0x1A, 0x02, 0x01)
    claims = amd.verify(raw, amd.collateral(leaf=leaf), trusted_arks=turin,
                        policy=SnpPolicy(min_tcb={"fmc": 1, "snp": 9}))
    assert claims.reported_tcb == {"bootloader": 4, "tee": 0, "snp": 9, "microcode": 0x4A, "fmc": 1}
    with pytest.raises(AttestationError, match="CPU family 0x1a is not Milan's"):
        amd.verify(raw, amd.collateral(leaf=leaf))
    milan_v3 = build_report(amd.vcek_key, version=3, cpuid=(0x19, 0x01, 0x01))
    assert amd.verify(milan_v3).version == 3
    with pytest.raises(AttestationError, match="CPU family 0x19 is not Turin's"):
        amd.verify(milan_v3, trusted_arks=turin)


def test_loader_reads_the_documented_names(tmp_path, amd):
    crl = amd.crl()
    ark_pem = x509.load_der_x509_certificate(amd.ark).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "ark.pem").write_bytes(ark_pem)
    (tmp_path / "ask.der").write_bytes(amd.ask)
    (tmp_path / "vlek.der").write_bytes(amd.vcek())
    (tmp_path / "crl.pem").write_bytes(x509.load_der_x509_crl(crl).public_bytes(serialization.Encoding.PEM))
    loaded = SnpCollateral.load(tmp_path)
    assert (loaded.signer, loaded.ark, loaded.ask, loaded.crl) == ("vlek", amd.ark, amd.ask, crl)
    with pytest.raises(ConfigError, match="not a directory"):
        SnpCollateral.load(tmp_path / "absent")


# --- parsers never fail with anything but their own error ---------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE), st.sampled_from([2, 3]), st.booleans())
def test_parse_report_only_raises_attestation_error(blob, version, valid_header):
    raw = bytearray(blob)
    if valid_header:  # get past the version and algorithm checks to the field decoding
        struct.pack_into("<I", raw, 0, version)
        struct.pack_into("<II", raw, 0x30, raw[0x30] & 3, 1)
    with contextlib.suppress(AttestationError):
        report = parse_report(bytes(raw))
        assert len(report.chip_id) == 64 and (report.version == version or not valid_header)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_certificate_reader_only_raises_attestation_error(amd, data):
    der = bytearray(amd.vcek())
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(AttestationError):
        load_certificate(bytes(der), "VCEK")


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_crl_reader_only_raises_attestation_error(amd, data):
    crl = bytearray(amd.crl(revoked=[5, 9]))
    for _ in range(data.draw(st.integers(1, 3))):
        crl[data.draw(st.integers(0, len(crl) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(AttestationError):
        amd.verify(build_report(amd.vcek_key), amd.collateral(crl=bytes(crl)))


def test_amds_roots_are_pinned_for_milan_genoa_and_turin():
    assert set(PINNED_ARK_SHA256) == {"Milan", "Genoa", "Turin"}
    assert len(set(PINNED_ARK_SHA256.values())) == 3
    assert all(len(bytes.fromhex(pin)) == 32 for pin in PINNED_ARK_SHA256.values())
