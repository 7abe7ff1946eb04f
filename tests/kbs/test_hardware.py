"""Hardware evidence at the key broker: the report must answer this nonce for this key and broker, and its
launch binding must name twofold's measurement; real SNP/TDX/SGX samples through ``twofold attest verify``."""

from __future__ import annotations

import base64
import json
import time

import pytest

from twofold.crypto.evidence import Evidence, hardware_report_data, launch_binding, replay_rtmr
from twofold.errors import AttestationError
from twofold.kbs import snp
from twofold.kbs.hardware import HardwareVerifier
from twofold.kbs.policy import parse_policy
from twofold.kbs.verifiers import verifier_for

from ..conftest import run_cli
from .test_snp import MEASUREMENT, build_report
from .test_snp import amd as amd
from .test_snp import vectors as snp_vectors  # noqa: F401 - the real samples (skips when absent)

TCB = "cd" * 32  # twofold's TCB measurement (what the policy's measurements list)
CONFIG = "ef" * 32  # the digest of the broker identity the enclave pins
PUBLIC = bytes(range(32))


def _policy(collateral, measurements=(MEASUREMENT.hex(),)):
    return parse_policy({"version": 3, "backends": ["sev-snp"], "platforms": {"sev-snp": {
        "collateral": str(collateral), "measurements": list(measurements)}},
        "measurements": {TCB: {"name": "twofold", "datasets": ["*"]}}})


def _evidence(report: bytes, nonce: str, measurement: str = TCB) -> Evidence:
    return Evidence(backend="sev-snp", measurement=measurement, nonce=nonce, report_data="", timestamp=time.time(),
                    config=CONFIG, quote=base64.b64encode(report).decode())


@pytest.fixture
def fake_amd_root(amd, tmp_path, monkeypatch):
    """The fake AMD chain on disk, its root pinned for this test only (production pins AMD's)."""
    (tmp_path / "ark.der").write_bytes(amd.ark)
    (tmp_path / "ask.der").write_bytes(amd.ask)
    (tmp_path / "vcek.der").write_bytes(amd.vcek())
    monkeypatch.setattr(snp, "PINNED_ARK_SHA256", amd.trusted)
    return tmp_path


def _bound(amd, nonce, **changes):
    fields = {"report_data": hardware_report_data(nonce, PUBLIC, CONFIG), "host_data": launch_binding(TCB, CONFIG)}
    return build_report(amd.vcek_key, **{**fields, **changes})


def test_a_bound_snp_report_verifies_to_twofolds_measurement(amd, fake_amd_root):
    verifier = verifier_for("sev-snp", _policy(fake_amd_root))
    assert isinstance(verifier, HardwareVerifier)
    claims = verifier.verify(_evidence(_bound(amd, "n-1"), "n-1"), "n-1", PUBLIC)
    assert (claims.backend, claims.measurement, claims.config) == ("sev-snp", TCB, CONFIG)


@pytest.mark.parametrize("case, reason", [
    ("another nonce", "report_data"),
    ("another twofold measurement", "host_data"),
    ("another launch measurement", "measurement"),
    ("a debug guest", "debug"),
])
def test_unbound_or_unwanted_reports_are_refused(amd, fake_amd_root, case, reason):
    nonce = "n-2"
    report, claimed = _bound(amd, nonce), TCB
    if case == "another nonce":
        report = _bound(amd, "n-old")  # a replayed report, made for an earlier challenge
    elif case == "another twofold measurement":
        claimed = "00" * 32  # the VM was launched for other code than the evidence claims
    elif case == "another launch measurement":
        report = _bound(amd, nonce, measurement=bytes(48))
    else:
        report = _bound(amd, nonce, policy=0x30000 | 1 << 19)
    with pytest.raises(AttestationError, match=reason):
        HardwareVerifier("sev-snp", _policy(fake_amd_root)).verify(_evidence(report, nonce, claimed), nonce, PUBLIC)


def test_a_chain_to_another_root_is_refused_under_the_pinned_roots(amd, tmp_path):
    (tmp_path / "ark.der").write_bytes(amd.ark)
    (tmp_path / "ask.der").write_bytes(amd.ask)
    (tmp_path / "vcek.der").write_bytes(amd.vcek())
    with pytest.raises(AttestationError):
        HardwareVerifier("sev-snp", _policy(tmp_path)).verify(_evidence(_bound(amd, "n"), "n"), "n", PUBLIC)


def test_a_policy_without_a_platform_rule_refuses_hardware_evidence():
    policy = parse_policy({"version": 3, "backends": ["sev-snp", "tdx"], "measurements": {}})
    for backend in ("sev-snp", "tdx"):
        with pytest.raises(AttestationError, match="no platform rule"):
            verifier_for(backend, policy)


def test_real_snp_sample_verifies_but_answers_no_twofold_challenge(snp_vectors, tmp_path):  # noqa: F811
    """A genuine Milan report passes the chain, signature and TCB checks, and is refused only because its
    REPORT_DATA does not bind this broker's nonce: evidence replayed from elsewhere gets no keys."""
    for name in ("ark.pem", "ask.pem"):
        (tmp_path / name).symlink_to(snp_vectors / name)
    (tmp_path / "vcek.der").symlink_to(snp_vectors / "vcek_milan.der")
    report = bytes.fromhex((snp_vectors / "report_milan.hex").read_text().strip())
    measurement = snp.parse_report(report).measurement.hex()
    with pytest.raises(AttestationError, match="report_data"):
        HardwareVerifier("sev-snp", _policy(tmp_path, [measurement])).verify(_evidence(report, "n"), "n", PUBLIC)


def test_attest_verify_cli_on_real_samples(snp_vectors, tmp_path):  # noqa: F811
    shared = snp_vectors.parent
    for name in ("ark.pem", "ask.pem"):
        (tmp_path / name).symlink_to(snp_vectors / name)
    (tmp_path / "vcek.der").symlink_to(snp_vectors / "vcek_milan.der")
    ok = run_cli("attest", "verify", str(snp_vectors / "report_milan.hex"), "--backend", "sev-snp", "--collateral",
                 str(tmp_path), "--at", "2025-01-01T00:00:00Z", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["measurement"].startswith("7a1e5c266c0108db")
    collateral = shared / "dcap-collateral"
    if (collateral / "tdx_quote").exists():
        tdx = run_cli("attest", "verify", str(collateral / "tdx_quote"), "--backend", "tdx", "--collateral",
                      str(collateral / "tdx_quote_collateral.json"), "--at", "2025-06-19T11:16:00Z", "--json")
        assert tdx.returncode == 0 and json.loads(tdx.stdout)["tcb_status"] == "UpToDate", tdx.stderr
        sgx = run_cli("attest", "verify", str(collateral / "sgx_quote"), "--backend", "sgx", "--collateral",
                      str(collateral / "sgx_quote_collateral.json"), "--at", "2025-06-19T11:16:00Z")
        assert sgx.returncode == 5 and "ConfigurationAndSWHardeningNeeded" in sgx.stderr
        late = run_cli("attest", "verify", str(collateral / "tdx_quote"), "--backend", "tdx", "--collateral",
                       str(collateral / "tdx_quote_collateral.json"), "--at", "2026-05-15T00:00:00Z")
        assert late.returncode == 5 and "CRL" in late.stderr
    flipped = bytearray(bytes.fromhex((snp_vectors / "report_milan.hex").read_text().strip()))
    flipped[0x90] ^= 1
    (tmp_path / "flipped.bin").write_bytes(bytes(flipped))
    bad = run_cli("attest", "verify", str(tmp_path / "flipped.bin"), "--backend", "sev-snp", "--collateral",
                  str(tmp_path), "--at", "2025-01-01T00:00:00Z")
    assert bad.returncode == 5 and "signature" in bad.stderr


def test_policy_init_for_a_hardware_backend(snp_vectors, tmp_path):  # noqa: F811
    """The owner's two commands: a policy for SEV-SNP with the VM's launch measurement, then `attest verify
    --policy` checks a report against it (and refuses it when the measurement is not the allowed one)."""
    collateral = tmp_path / "collateral"
    collateral.mkdir()
    for name in ("ark.pem", "ask.pem"):
        (collateral / name).symlink_to(snp_vectors / name)
    (collateral / "vcek.der").symlink_to(snp_vectors / "vcek_milan.der")
    report = snp_vectors / "report_milan.hex"
    launch = snp.parse_report(bytes.fromhex(report.read_text().strip())).measurement.hex()
    for allowed, code in ((launch, 0), ("00" * 48, 5)):
        out = tmp_path / f"policy-{code}.json"
        made = run_cli("policy", "init", "--out", str(out), "--dataset", "*", "--backend", "sev-snp",
                       "--platform-measurement", allowed, "--collateral", str(collateral), "--measurement", TCB)
        assert made.returncode == 0, made.stderr
        doc = json.loads(out.read_text())
        assert doc["backends"] == ["sev-snp"] and not doc["allow_simulation"] and "sev-snp" in doc["platforms"]
        checked = run_cli("attest", "verify", str(report), "--backend", "sev-snp", "--collateral", str(collateral),
                          "--policy", str(out), "--at", "2025-01-01T00:00:00Z")
        assert checked.returncode == code, checked.stderr
    assert run_cli("policy", "init", "--out", str(tmp_path / "x.json"), "--dataset", "*", "--backend",
                   "tdx").returncode != 0  # a hardware backend needs its launch measurements and collateral


def test_rtmr_replay_is_the_tdx_extend_chain():
    import hashlib

    first, second = "11" * 48, "22" * 48
    expected = hashlib.sha384(hashlib.sha384(bytes(48) + bytes.fromhex(first)).digest() + bytes.fromhex(second))
    assert replay_rtmr([first, second]) == expected.hexdigest() and replay_rtmr([]) == "00" * 48
    with pytest.raises(ValueError):
        replay_rtmr(["abcd"])


def _tdx_policy(tmp_path):
    return parse_policy({"version": 3, "backends": ["tdx"], "measurements": {TCB: {"name": "t", "datasets": ["*"]}},
                         "platforms": {"tdx": {"collateral": str(tmp_path / "collateral.json"),
                                               "measurements": ["aa" * 48]}}})


@pytest.mark.parametrize("how, reason", [
    ("mrconfigid", None),
    ("rtmr3", None),
    ("rtmr3 extended after twofold", "does not end with"),
    ("rtmr3 log that does not replay", "does not replay"),
    ("neither", "neither in MRCONFIGID nor in RTMR3"),
])
def test_tdx_binds_twofolds_measurement_in_mrconfigid_or_rtmr3(tmp_path, monkeypatch, how, reason):
    """The quote's own checks are dcap-qvl's (test_dcap.py); here, the launch binding's two forms on TDX."""
    from twofold.kbs import dcap, hardware

    binding = launch_binding(TCB, CONFIG, 48).hex()
    other = "33" * 48
    log = {"rtmr3": (binding,), "rtmr3 extended after twofold": (binding, other),
           "rtmr3 log that does not replay": (binding,)}.get(how, ())
    rtmr3 = replay_rtmr(log) if how != "rtmr3 log that does not replay" else replay_rtmr((other,))
    claims = dcap.DcapClaims("tdx", 4, "UpToDate", (), hardware_report_data("n", PUBLIC, CONFIG).hex(), False, (),
                             mrtd="aa" * 48, rtmr3=rtmr3, mr_config_id=binding if how == "mrconfigid" else "00" * 48)
    monkeypatch.setattr(hardware, "verify_dcap", lambda *a, **k: claims)
    evidence = Evidence(backend="tdx", measurement=TCB, nonce="n", report_data="", timestamp=time.time(),
                        config=CONFIG, quote=base64.b64encode(b"quote").decode(), event_log=log)
    verifier = HardwareVerifier("tdx", _tdx_policy(tmp_path))
    if reason is None:
        assert verifier.verify(evidence, "n", PUBLIC).measurement == TCB
    else:
        with pytest.raises(AttestationError, match=reason):
            verifier.verify(evidence, "n", PUBLIC)


def test_broker_side_tdx_verification_of_a_real_quote_checks_its_collateral_now(snp_vectors):  # noqa: F811
    """The broker verifies at its own clock: the sample's collateral has expired since, so a genuine TDX quote
    is refused for that (and would be for its report_data next), never waved through."""
    collateral = snp_vectors.parent / "dcap-collateral"
    if not (collateral / "tdx_quote").exists():
        pytest.skip("no DCAP samples")
    policy = parse_policy({"version": 3, "backends": ["tdx"], "measurements": {},
                           "platforms": {"tdx": {"collateral": str(collateral / "tdx_quote_collateral.json"),
                                                 "measurements": ["aa" * 48]}}})
    quote = (collateral / "tdx_quote").read_bytes()
    evidence = Evidence(backend="tdx", measurement=TCB, nonce="n", report_data="", timestamp=time.time(),
                        config=CONFIG, quote=base64.b64encode(quote).decode())
    with pytest.raises(AttestationError, match=r"CRL|expired|TCB"):
        HardwareVerifier("tdx", policy).verify(evidence, "n", PUBLIC)
