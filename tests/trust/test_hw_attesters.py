"""The attesting half on hardware, run against directories laid out like configfs-tsm and Gramine's
/dev/attestation that serve a fake report (clearly a sample: built by the SNP tests' fake AMD chain)."""

from __future__ import annotations

import base64

import pytest

from twofold.crypto.evidence import hardware_report_data
from twofold.enclave.hw_attesters import GramineAttester, TsmAttester, attester_for
from twofold.errors import ConfigError, ServiceError
from twofold.services import start_enclave

SAMPLE = b"SAMPLE-REPORT-NOT-FROM-HARDWARE" * 8
PUBLIC, NONCE, CONFIG, TCB = bytes(range(32)), "nonce-1", "ab" * 32, "cd" * 32


def _tsm(tmp_path, provider="sev_guest"):
    entry = tmp_path / "tsm" / "prepared"
    entry.mkdir(parents=True)
    (entry / "provider").write_text(provider + "\n")
    (entry / "generation").write_text("7\n")
    (entry / "outblob").write_bytes(SAMPLE)
    return tmp_path / "tsm", entry


def test_configfs_tsm_attester_writes_the_binding_and_returns_the_report(tmp_path):
    root, entry = _tsm(tmp_path)
    attester = TsmAttester(root, entry="prepared")
    evidence = attester.evidence(TCB, NONCE, PUBLIC, CONFIG)
    assert attester.backend == evidence.backend == "sev-snp"
    assert (entry / "inblob").read_bytes() == hardware_report_data(NONCE, PUBLIC, CONFIG)
    assert base64.b64decode(evidence.quote) == SAMPLE and evidence.measurement == TCB and evidence.config == CONFIG
    assert TsmAttester(_tsm(tmp_path / "t", "tdx_guest")[0], entry="prepared").backend == "tdx"


def test_configfs_tsm_refuses_unknown_providers_and_missing_entries(tmp_path):
    root, _ = _tsm(tmp_path, provider="arm_cca_guest")
    with pytest.raises(ConfigError, match="not SEV-SNP or TDX"):
        TsmAttester(root, entry="prepared")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a configfs-tsm report directory"):
        TsmAttester(tmp_path / "empty")  # a made entry with no attributes: not configfs


def test_gramine_attester(tmp_path):
    (tmp_path / "attestation_type").write_text("dcap")
    (tmp_path / "quote").write_bytes(SAMPLE)
    evidence = GramineAttester(tmp_path).evidence(TCB, NONCE, PUBLIC, CONFIG)
    assert evidence.backend == "sgx" and base64.b64decode(evidence.quote) == SAMPLE
    assert (tmp_path / "user_report_data").read_bytes() == hardware_report_data(NONCE, PUBLIC, CONFIG)
    (tmp_path / "attestation_type").write_text("epid")
    with pytest.raises(ConfigError, match="dcap"):
        GramineAttester(tmp_path)


def test_auto_never_falls_back_to_simulation(tmp_path, monkeypatch):
    from twofold.enclave import hw_attesters

    missing = tmp_path / "none"
    assert attester_for("simulation", missing, missing) is None  # simulation only when asked for
    with pytest.raises(ConfigError, match="--backend simulation"):
        attester_for("auto", missing, missing)
    root, _ = _tsm(tmp_path)
    prepared = hw_attesters.TsmAttester
    monkeypatch.setattr(hw_attesters, "TsmAttester", lambda r: prepared(r, entry="prepared"))  # serve the fake
    assert attester_for("auto", root, missing).backend == "sev-snp"
    with pytest.raises(ConfigError, match="provides sev-snp, not tdx"):
        attester_for("tdx", root, missing)


def test_enclave_with_backend_auto_refuses_to_start_without_hardware(broker, tmp_path):
    with pytest.raises(ServiceError, match="--backend simulation"):
        start_enclave(tmp_path / "auto.sock", broker.url, broker.identity_path, log_path=tmp_path / "auto.log",
                      extra=("--backend", "auto"))


def test_broker_refuses_a_real_snp_report_that_answers_another_challenge(make_broker, tmp_path):
    """End to end through the key broker's HTTP service: a genuine SEV-SNP report (from the shared samples)
    passes AMD's chain, and is refused, with an audit entry, because it does not answer this nonce."""
    import time

    from twofold.crypto.evidence import Evidence
    from twofold.enclave.broker_client import BrokerSession
    from twofold.errors import AttestationError
    from twofold.kbs.snp import parse_report

    from ..kbs.test_snp import _vectors

    samples = _vectors()
    if samples is None:
        pytest.skip("the shared attestation vectors are absent")
    collateral = tmp_path / "collateral"
    collateral.mkdir()
    for name in ("ark.pem", "ask.pem"):
        (collateral / name).symlink_to(samples / name)
    (collateral / "vcek.der").symlink_to(samples / "vcek_milan.der")
    report = bytes.fromhex((samples / "report_milan.hex").read_text().strip())
    launch = parse_report(report).measurement.hex()
    broker = make_broker(version=3, backends=["simulation", "sev-snp"],
                         platforms={"sev-snp": {"collateral": str(collateral), "measurements": [launch]}})

    def replayed(nonce, public, config):
        return Evidence(backend="sev-snp", measurement=TCB, nonce=nonce, report_data="", timestamp=time.time(),
                        config=config, quote=base64.b64encode(report).decode())

    session = BrokerSession(broker.url, TCB, replayed, broker.identity, backend="sev-snp")
    with pytest.raises(AttestationError, match="report_data"):
        session.attest()
    assert any("report_data" in d["reason"] for d in broker.denials())


def test_gramine_manifest_trusts_python_its_libraries_and_exactly_the_tcb(keystore, tmp_path):
    import sys
    import tomllib
    from pathlib import Path

    from twofold.enclave.measure import tcb_files

    from ..conftest import run_cli

    identity = tmp_path / "broker.json"
    identity.write_text(keystore.broker_identity().to_json())
    (tmp_path / "data").mkdir()
    out = tmp_path / "twofold.manifest.template"
    made = run_cli("gramine", "manifest", "--out", str(out), "--socket", "/run/twofold.sock", "--kbs",
                   "https://kbs.example:8650", "--broker-identity", str(identity), "--data", str(tmp_path / "data"))
    assert made.returncode == 0, made.stderr
    doc = tomllib.loads(out.read_text())
    sgx, loader = doc["sgx"], doc["loader"]
    assert sgx["remote_attestation"] == "dcap" and sgx["debug"] is False
    trusted = set(sgx["trusted_files"])
    assert {f"file:{p}" for p in tcb_files()} <= trusted and f"file:{Path(sys.executable).resolve()}" in trusted
    assert f"file:{identity.resolve()}" in trusted  # the broker identity is measured too
    assert sgx["allowed_files"] == [f"file:{(tmp_path / 'data').resolve()}/"]
    argv = loader["argv"]
    assert argv[argv.index("--backend") + 1] == "sgx" and "-I" in argv and "twofold.enclave" in argv


def test_tdx_attester_extends_rtmr3_once_with_the_launch_binding(tmp_path):
    from twofold.crypto.evidence import launch_binding

    root, _ = _tsm(tmp_path, provider="tdx_guest")
    rtmr3 = tmp_path / "rtmr3:sha384"  # laid out like Linux's tsm-mr file (a real kernel extends on write)
    rtmr3.write_bytes(bytes(48))
    attester = TsmAttester(root, entry="prepared", rtmr3=rtmr3)
    first = attester.evidence(TCB, NONCE, PUBLIC, CONFIG)
    binding = launch_binding(TCB, CONFIG, 48)
    assert first.event_log == (binding.hex(),) and rtmr3.read_bytes() == binding
    assert attester.evidence(TCB, "nonce-2", PUBLIC, CONFIG).event_log == first.event_log  # extended once
    used = tmp_path / "used"
    used.write_bytes(b"\x01" * 48)  # RTMR3 already holds something else: rely on MRCONFIGID instead
    assert TsmAttester(root, entry="prepared", rtmr3=used).evidence(TCB, NONCE, PUBLIC, CONFIG).event_log == ()
