"""Intel TDX and SGX DCAP quote verification against known-answer vectors from real Intel machines.

The vectors are read from ``<repo>/../shared/attestation-vectors`` (never copied into the project); tests that
need them skip when the folder is absent, and those that verify skip without dcap-qvl (``twofold[tee]``). Every
verification pins its time: the sample collateral's CRLs expire on 2026-04-03.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from twofold.errors import AttestationError
from twofold.kbs.dcap import (
    DcapClaims,
    DcapPolicy,
    dcap_reason,
    quote_header,
    quote_tee,
    verify_dcap,
)

PINNED = datetime(2025, 6, 19, 11, 16, tzinfo=UTC)  # one hour after the TCB info of tdx_quote/sgx_quote was issued
OUTDATED_AT = datetime(2026, 3, 1, tzinfo=UTC)  # inside the window of tdx_quote_outdated's collateral (Feb-Mar 2026)
CRL_EXPIRED_AT = datetime(2026, 5, 15, tzinfo=UTC)  # the CRLs' nextUpdate is 2026-04-03

TDX_MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
TDX_REPORT_DATA = ("9a9d48e7f6799642d3d1b34e1e5e1742d4bb02dd6ddd551862c1211d35c304f9"
                   "eca3efdbb481601c163cf52493d6e44aed55d51ec39b7e518fadb92c2b523f20")
SGX_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
SGX_MRSIGNER = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
SGX_STATUS = "ConfigurationAndSWHardeningNeeded"
SGX_ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
TCB_ANY = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", SGX_STATUS, "OutOfDate")
README_V4_MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
README_V4_REPORT_DATA_PREFIX = "6c62dec1b8191749"
README_V5_MRTD_PREFIX = "7348651a34b2d2d3"
BODY_LEN = {"tdx": 584, "sgx": 384}  # v4 TD report / v3 enclave report, after the 48-byte header


def _vectors_dir() -> Path | None:
    repo = Path(__file__).resolve().parents[2]
    for base in (repo.parent / "shared" / "attestation-vectors", Path("/work/shared/attestation-vectors")):
        if (base / "README.md").is_file():
            return base
    return None


VECTORS = _vectors_dir()


@pytest.fixture
def vectors() -> Path:
    if VECTORS is None:
        pytest.skip("attestation vectors not found at <repo>/../shared/attestation-vectors")
    return VECTORS


@pytest.fixture
def qvl(vectors):
    return pytest.importorskip("dcap_qvl", reason="dcap-qvl not installed (pip install twofold[tee])")


def _case(vectors: Path, name: str) -> tuple[bytes, Path]:
    folder = vectors / "dcap-collateral"
    return (folder / name).read_bytes(), folder / f"{name}_collateral.json"


def _collateral(path: Path) -> dict:
    return json.loads(path.read_text())


def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def _refused(match: str, fn, *args, **kwargs) -> str:
    """Assert that ``fn`` raises AttestationError matching ``match``; its message carries no long hex blob."""
    with pytest.raises(AttestationError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert not re.search(r"[0-9a-fA-F]{40}", message), message
    return message


def _sig_offset(quote: bytes) -> int:
    """Where the ECDSA quote signature starts (after header, body and the 4-byte auth data length)."""
    header = quote_header(quote)
    if header.version == 5:
        body_size = struct.unpack_from("<I", quote, 50)[0]
        return 48 + 6 + body_size + 4
    return 48 + BODY_LEN[header.tee] + 4


# ------------------------------------------------------------------------------------------- known answers


def test_tdx_quote_is_up_to_date_at_the_pinned_time(vectors, qvl):
    quote, collateral = _case(vectors, "tdx_quote")
    claims = verify_dcap(quote, collateral, at=PINNED)
    report = qvl.parse_quote(quote).report
    assert (claims.backend, claims.quote_version, claims.tcb_status, claims.advisories) == ("tdx", 4, "UpToDate", ())
    assert claims.mrtd == report.mr_td.hex() == TDX_MRTD == claims.measurement
    assert claims.report_data == report.report_data.hex() == TDX_REPORT_DATA
    assert claims.rtmrs == tuple(getattr(report, f"rt_mr{i}").hex() for i in range(4))
    assert claims.td_attributes == report.td_attributes.hex() and claims.xfam == report.xfam.hex()
    assert claims.mr_config_id == claims.mr_owner == claims.mr_owner_config == "00" * 48
    assert not claims.debug and claims.attribute_flags == ("SEPT_VE_DISABLE",)
    assert claims.mrenclave is None and claims.isv_svn is None
    described = json.loads(json.dumps(claims.describe()))
    assert described["measurement"] == TDX_MRTD and described["advisories"] == [] and "mrenclave" not in described


def test_collateral_may_be_a_dict_or_a_directory_holding_collateral_json(vectors, qvl, tmp_path):
    quote, collateral = _case(vectors, "tdx_quote")
    (tmp_path / "collateral.json").symlink_to(collateral)  # a link, so the vector is never copied
    for given_collateral in (_collateral(collateral), tmp_path, str(tmp_path), str(collateral)):
        assert verify_dcap(quote, given_collateral, at=PINNED).mrtd == TDX_MRTD


def test_sgx_quote_needs_its_tcb_status_listed_and_names_its_advisories(vectors, qvl):
    quote, collateral = _case(vectors, "sgx_quote")
    message = _refused(f"TCB status {SGX_STATUS}", verify_dcap, quote, collateral, at=PINNED)
    assert "INTEL-SA-00615" in message and "accepted: UpToDate" in message

    policy = DcapPolicy(accepted_tcb_statuses=("UpToDate", SGX_STATUS))
    claims = verify_dcap(quote, collateral, at=PINNED, policy=policy)
    report = qvl.parse_quote(quote).report
    assert (claims.backend, claims.quote_version, claims.tcb_status) == ("sgx", 3, SGX_STATUS)
    assert claims.advisories == SGX_ADVISORIES
    assert claims.mrenclave == report.mr_enclave.hex() == SGX_MRENCLAVE == claims.measurement
    assert claims.mrsigner == report.mr_signer.hex() == SGX_MRSIGNER
    assert (claims.isv_prodid, claims.isv_svn) == (0, 0)
    assert bytes.fromhex(claims.report_data).rstrip(b"\0") == b"Hello, world!"
    assert not claims.debug and claims.attribute_flags == ("INIT", "MODE64BIT")
    assert claims.mrtd is None and claims.rtmrs == (None,) * 4

    refusing = replace(policy, refused_advisories=("intel-sa-00615",))
    _refused("advisory INTEL-SA-00615, which the policy refuses", verify_dcap, quote, collateral, at=PINNED,
             policy=refusing)


def test_outdated_tdx_quote_has_no_matching_tcb_level(vectors, qvl):
    quote, collateral = _case(vectors, "tdx_quote_outdated")
    _refused("No matching TCB level", verify_dcap, quote, collateral, at=OUTDATED_AT)
    # the vectors README gives 2025-06-19 for this case too, but its collateral was issued on 2026-02-18
    _refused("TCB info was issued after the verification time", verify_dcap, quote, collateral, at=PINNED)


@pytest.mark.parametrize("name", ["tdx_quote", "sgx_quote", "tdx_quote_outdated"])
def test_every_vector_fails_once_the_crls_expire(vectors, qvl, name):
    quote, collateral = _case(vectors, name)
    _refused("CRL has expired", verify_dcap, quote, collateral, at=CRL_EXPIRED_AT,
             policy=DcapPolicy(accepted_tcb_statuses=("UpToDate", SGX_STATUS)))


def test_tcb_info_expires_before_the_crls(vectors, qvl):
    quote, collateral = _case(vectors, "tdx_quote")
    _refused("TCB info has expired", verify_dcap, quote, collateral, at=datetime(2025, 8, 1, tzinfo=UTC))


# ------------------------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("name", ["tdx_quote", "sgx_quote"])
@pytest.mark.parametrize("where", ["header", "body", "report_data", "signature"])
def test_a_flipped_bit_in_the_signed_quote_or_its_signature_is_refused(vectors, qvl, name, where):
    quote, collateral = _case(vectors, name)
    body_end = 48 + BODY_LEN[quote_tee(quote)]
    offset = {"header": 10, "body": 48 + 100, "report_data": body_end - 1, "signature": _sig_offset(quote) + 5}
    _refused("quote signature does not verify", verify_dcap, _flip(quote, offset[where]), collateral, at=PINNED)


def test_a_flipped_attestation_key_breaks_the_qe_binding(vectors, qvl):
    quote, collateral = _case(vectors, "tdx_quote")
    _refused("QE report does not bind the attestation key", verify_dcap, _flip(quote, _sig_offset(quote) + 64 + 3),
             collateral, at=PINNED)


def test_a_flipped_tee_type_is_refused_before_dcap_qvl_runs(vectors):
    quote = (vectors / "dcap-collateral" / "tdx_quote").read_bytes()
    _refused("unknown TEE type 0x00000083", quote_tee, _flip(quote, 4, 1))
    _refused("unsupported TDX quote version 6", quote_tee, _flip(quote, 0, 1))


@pytest.mark.parametrize("name", ["tdx_quote", "sgx_quote"])
def test_truncated_quotes_are_refused(vectors, qvl, name):
    quote, collateral = _case(vectors, name)
    _refused("shorter than its 48-byte header", verify_dcap, quote[:47], collateral, at=PINNED)
    for length in (48, 48 + BODY_LEN[quote_tee(quote)], len(quote) // 2):
        _refused("malformed or truncated", verify_dcap, quote[:length], collateral, at=PINNED)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_in_the_signed_part_is_refused(vectors, qvl, position, bit):
    quote, collateral = _case(vectors, "tdx_quote")
    signed_end = _sig_offset(quote) + 64  # header, body and the signature itself
    offset = int(position * signed_end)
    # The 4-byte auth data length just before the signature is framing, not signed: dcap-qvl reads the auth data
    # from its own structure and ignores trailing bytes (real quotes carry some), so a flip there changes nothing.
    assume(not _sig_offset(quote) - 4 <= offset < _sig_offset(quote))
    with pytest.raises(AttestationError):
        verify_dcap(_flip(quote, offset, bit), collateral, at=PINNED)


def _tampered(collateral: Path, key: str, edit) -> dict:
    data = _collateral(collateral)
    data[key] = edit(data[key], data)
    return data


def _flip_last_hex(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


COLLATERAL_TAMPERING = {
    "tcb_info": (lambda v, d: v.replace('"tcbStatus":"OutOfDate"', '"tcbStatus":"UpToDate"', 1),
                 "TCB info signature does not verify"),
    "tcb_info_signature": (lambda v, d: _flip_last_hex(v), "TCB info signature does not verify"),
    "qe_identity": (lambda v, d: re.sub(r'"tcbEvaluationDataNumber":(\d+)', '"tcbEvaluationDataNumber":99', v, count=1),
                    "QE identity signature does not verify"),
    "pck_crl": (lambda v, d: _flip_last_hex(v), "a CRL is not signed by its issuer"),
    "root_ca_crl": (lambda v, d: _flip_last_hex(v), "root CA CRL is not signed by Intel's root CA"),
    "tcb_info_issuer_chain": (lambda v, d: d["pck_crl_issuer_chain"], "a CA certificate where the signer's"),
    "qe_identity_issuer_chain": (lambda v, d: "", "a certificate chain is incomplete"),
}


@pytest.mark.parametrize("key", sorted(COLLATERAL_TAMPERING))
def test_tampered_collateral_is_refused(vectors, qvl, key):
    quote, collateral = _case(vectors, "tdx_quote")
    edit, reason = COLLATERAL_TAMPERING[key]
    tampered = _tampered(collateral, key, edit)
    assert tampered != _collateral(collateral)
    _refused(reason, verify_dcap, quote, tampered, at=PINNED)


def test_collateral_for_another_platform_or_tee_is_refused(vectors, qvl):
    quote, collateral = _case(vectors, "tdx_quote")
    _, sgx_collateral = _case(vectors, "sgx_quote")
    _refused("QE identity is for the other TEE type", verify_dcap, quote, sgx_collateral, at=PINNED)
    wrong_crl = _tampered(collateral, "pck_crl", lambda v, d: _collateral(sgx_collateral)["pck_crl"])
    _refused("CRLs do not cover the PCK chain", verify_dcap, quote, wrong_crl, at=PINNED)
    v4 = (vectors / "tdx" / "tdx-quote-v4.dat").read_bytes()
    _refused(r"another platform \(FMSPC mismatch\)", verify_dcap, v4, collateral, at=PINNED)


def test_unreadable_or_malformed_collateral_is_refused(vectors, qvl, tmp_path):
    quote, _ = _case(vectors, "tdx_quote")
    _refused("cannot be read", verify_dcap, quote, tmp_path / "missing.json", at=PINNED)
    _refused("collateral.json cannot be read", verify_dcap, quote, tmp_path, at=PINNED)
    _refused("not QuoteCollateralV3 JSON: .*missing field", verify_dcap, quote, {"tcb_info": "{}"}, at=PINNED)
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe")
    _refused("not UTF-8", verify_dcap, quote, tmp_path / "bad.json", at=PINNED)


# ------------------------------------------------------------------------------------------- policy


def test_tdx_measurement_report_data_and_rtmr_pins(vectors, qvl):
    quote, collateral = _case(vectors, "tdx_quote")
    claims = verify_dcap(quote, collateral, at=PINNED)
    rtmrs = dict(enumerate(claims.rtmrs))
    good = DcapPolicy(allowed_mrtds=(TDX_MRTD.upper(),), expected_rtmrs=rtmrs, expected_report_data=TDX_REPORT_DATA)
    assert verify_dcap(quote, collateral, at=PINNED, policy=good) == claims
    assert DcapPolicy(expected_report_data=TDX_REPORT_DATA[:64]).check(claims) is claims  # 32-byte form

    _refused("MRTD 91eb2b44d141d4ec... is not one the policy allows", verify_dcap, quote, collateral, at=PINNED,
             policy=replace(good, allowed_mrtds=("00" * 48,)))
    _refused("RTMR2 does not match the policy", verify_dcap, quote, collateral, at=PINNED,
             policy=replace(good, expected_rtmrs={**rtmrs, 2: "00" * 48}))
    _refused("report_data does not match", verify_dcap, quote, collateral, at=PINNED,
             policy=replace(good, expected_report_data="00" * 64))


def test_sgx_measurement_signer_product_and_svn_pins(vectors, qvl):
    quote, collateral = _case(vectors, "sgx_quote")
    base = DcapPolicy(accepted_tcb_statuses=(SGX_STATUS,), allowed_mrenclaves=(SGX_MRENCLAVE,),
                      allowed_mrsigners=(SGX_MRSIGNER,), isv_prodid=0, min_isv_svn=0)
    assert verify_dcap(quote, collateral, at=PINNED, policy=base).mrenclave == SGX_MRENCLAVE
    for change, reason in (({"allowed_mrenclaves": ("11" * 32,)}, "MRENCLAVE 33d8736db756ed49... is not one"),
                           ({"allowed_mrsigners": ("11" * 32,)}, "MRSIGNER 815f42f11cf64430... is not one"),
                           ({"isv_prodid": 7}, "ISVPRODID 0 is not the policy's 7"),
                           ({"min_isv_svn": 2}, "ISVSVN 0 is below the policy's minimum 2"),
                           ({"expected_report_data": "00" * 32}, "report_data does not match")):
        _refused(reason, verify_dcap, quote, collateral, at=PINNED, policy=replace(base, **change))


def test_pins_for_one_tee_refuse_quotes_from_the_other(vectors, qvl):
    tdx_quote, tdx_collateral = _case(vectors, "tdx_quote")
    sgx_quote, sgx_collateral = _case(vectors, "sgx_quote")
    _refused("TDX quotes are not accepted by the policy", verify_dcap, tdx_quote, tdx_collateral, at=PINNED,
             policy=DcapPolicy(allowed_mrenclaves=(SGX_MRENCLAVE,)))
    _refused("SGX quotes are not accepted", verify_dcap, sgx_quote, sgx_collateral, at=PINNED,
             policy=DcapPolicy(accepted_tcb_statuses=(SGX_STATUS,), allowed_mrtds=(TDX_MRTD,)))
    _refused("TDX quotes are not accepted", verify_dcap, tdx_quote, tdx_collateral, at=PINNED,
             policy=DcapPolicy(backends=("sgx",)))


def _claims(backend: str, **extra) -> DcapClaims:
    common = {"backend": backend, "quote_version": 4, "tcb_status": "UpToDate", "advisories": (),
              "report_data": "00" * 64, "debug": False, "attribute_flags": ()}
    pins = {"mrtd": TDX_MRTD} if backend == "tdx" else {"mrenclave": SGX_MRENCLAVE, "isv_prodid": 0, "isv_svn": 0}
    return DcapClaims(**{**common, **pins, **extra})


@pytest.mark.parametrize(("backend", "kind"), [("tdx", "TD"), ("sgx", "enclave")])
def test_debug_tds_and_enclaves_are_refused_unless_allowed(backend, kind):
    # no real debug quote is at hand (flipping the debug bit breaks the signature), so the policy is checked on claims
    debug = _claims(backend, debug=True, attribute_flags=("DEBUG",))
    _refused(f"a debug {kind} .*does not allow debug", DcapPolicy().check, debug)
    assert DcapPolicy(allow_debug=True).check(debug) is debug
    assert DcapPolicy().check(_claims(backend)).measurement in (TDX_MRTD, SGX_MRENCLAVE)


def test_policy_values_are_validated_when_the_policy_is_made():
    with pytest.raises(ValueError, match="unknown TCB status 'uptodate'"):
        DcapPolicy(accepted_tcb_statuses=("uptodate",))
    with pytest.raises(ValueError, match="Revoked is never accepted"):
        DcapPolicy(accepted_tcb_statuses=("Revoked",))
    with pytest.raises(ValueError, match="32 bytes, expected 48"):
        DcapPolicy(allowed_mrtds=(SGX_MRENCLAVE,))
    with pytest.raises(ValueError, match="not hex"):
        DcapPolicy(allowed_mrenclaves=("zz" * 32,))
    with pytest.raises(ValueError, match="RTMRs are 0-3"):
        DcapPolicy(expected_rtmrs={4: "00" * 48})
    with pytest.raises(ValueError, match="expected 32 or 64"):
        DcapPolicy(expected_report_data="00" * 16)
    with pytest.raises(TypeError, match="list of hex strings"):
        DcapPolicy(allowed_mrtds=TDX_MRTD)
    with pytest.raises(TypeError, match="list of names"):
        DcapPolicy(refused_advisories="INTEL-SA-00615")
    with pytest.raises(ValueError, match="known: tdx, sgx"):
        DcapPolicy(backends=("sev-snp",))
    assert DcapPolicy(expected_rtmrs={"1": "AB" * 48}).expected_rtmrs == {1: "ab" * 48}


# ------------------------------------------------------------------------------------------- other vectors


def test_a_quote_chaining_to_intels_sample_root_is_refused(vectors, qvl):
    quote = (vectors / "sgx" / "sample-root-quote-v3.dat").read_bytes()
    header = quote_header(quote)
    assert (header.tee, header.version, header.attestation_key_type) == ("sgx", 3, 2)
    _, collateral = _case(vectors, "sgx_quote")
    # certification data type 1 (PPID): the quote embeds no PCK chain, so dcap-qvl cannot start
    _refused("carries no PCK certificate chain", verify_dcap, quote, collateral, at=PINNED)
    # with the sample's own PCK chain attached, the chain must end at Intel's real root, and it does not
    sgx = vectors / "sgx"
    chain = (sgx / "sgx_pckCert.pem").read_text() + (sgx / "sgx_pckSignChain.pem").read_text()
    with_chain = {**_collateral(collateral), "pck_certificate_chain": chain}
    _refused("PCK certificate chain does not lead to Intel's SGX root CA", verify_dcap, quote, with_chain, at=PINNED,
             policy=DcapPolicy(accepted_tcb_statuses=TCB_ANY))


def test_v4_and_v5_quotes_are_dispatched_and_refused_without_collateral(vectors, qvl):
    v4 = (vectors / "tdx" / "tdx-quote-v4.dat").read_bytes()
    v5 = (vectors / "tdx" / "tdx-quote-v5.dat").read_bytes()
    assert (quote_tee(v4), quote_header(v4).version) == ("tdx", 4)
    assert (quote_tee(v5), quote_header(v5).version) == ("tdx", 5)
    assert qvl.parse_quote(v4).report.mr_td.hex() == README_V4_MRTD  # parsed, not verified
    assert qvl.parse_quote(v4).report.report_data.hex().startswith(README_V4_REPORT_DATA_PREFIX)
    _refused("no collateral given.*for FMSPC 50806F000000", verify_dcap, v4, None, at=PINNED)
    _refused("no collateral given.*for FMSPC 90C06F000000", verify_dcap, v5, None, at=PINNED)


def test_the_v5_quote_verifies_with_collateral_for_its_platform(vectors, qvl):
    # tdx-quote-v5.dat has FMSPC 90C06F000000, the platform of tdx_quote_outdated's (Intel-signed) collateral
    v5 = (vectors / "tdx" / "tdx-quote-v5.dat").read_bytes()
    _, collateral = _case(vectors, "tdx_quote_outdated")
    claims = verify_dcap(v5, collateral, at=OUTDATED_AT)
    assert (claims.backend, claims.quote_version, claims.tcb_status) == ("tdx", 5, "UpToDate")
    assert claims.mrtd.startswith(README_V5_MRTD_PREFIX) and claims.mrtd == qvl.parse_quote(v5).report.mr_td.hex()


# ------------------------------------------------------------------------------------------- inputs


def test_header_reading_refuses_what_is_not_a_dcap_quote():
    _refused("shorter than its 48-byte header", quote_tee, b"")
    _refused("unsupported TDX quote version 3", quote_tee, struct.pack("<HHI", 3, 2, 0x81) + bytes(40))
    _refused("over the 65536-byte bound", quote_tee, bytes(65537))
    assert quote_tee(struct.pack("<HHI", 3, 2, 0) + bytes(40)) == "sgx"
    with pytest.raises(TypeError):
        quote_tee("not bytes")  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=96))
def test_header_reading_never_fails_another_way(data):
    try:
        header = quote_header(data)
    except AttestationError:
        return
    assert header.tee in ("tdx", "sgx") and header.version in (3, 4, 5)


def test_the_verification_time_must_be_an_aware_datetime(vectors, qvl):
    quote, collateral = _case(vectors, "tdx_quote")
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_dcap(quote, collateral, at=datetime(2025, 6, 19, 11, 16))
    with pytest.raises(TypeError):
        verify_dcap(quote, collateral, at=1750331760)  # type: ignore[arg-type]


def test_unknown_dcap_qvl_errors_keep_their_first_line():
    assert dcap_reason("Verification failed: Something new\n\nCaused by:\n    detail") == \
        "dcap-qvl refused it: Something new"
    assert dcap_reason("Verification failed: No matching TCB level found").startswith("No matching TCB level")


class PanicException(BaseException):
    """Stands in for pyo3's PanicException (a BaseException), which a Rust panic raises."""


def test_a_panic_inside_dcap_qvl_is_a_refusal(vectors, qvl, monkeypatch):
    quote, collateral = _case(vectors, "tdx_quote")

    def panics(*_args):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(qvl, "verify", panics)
    _refused("internal panic", verify_dcap, quote, collateral, at=PINNED)


def test_without_dcap_qvl_verification_is_refused_but_dispatch_works(vectors, monkeypatch):
    quote, collateral = _case(vectors, "tdx_quote")
    monkeypatch.setitem(sys.modules, "dcap_qvl", None)  # import now raises ImportError
    assert quote_tee(quote) == "tdx"
    _refused(r"needs dcap-qvl: install twofold\[tee\]", verify_dcap, quote, collateral, at=PINNED)
