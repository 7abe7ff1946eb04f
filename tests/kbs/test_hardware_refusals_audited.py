"""Every kind of bad SEV-SNP evidence sent to a running key broker: refused (403) with its own reason, and
each refusal is an entry of the broker's audit log naming that reason. The fake AMD root (built with
`cryptography` in test_snp) is pinned in this process only; one case keeps AMD's real pins."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from twofold.crypto.evidence import Evidence, hardware_report_data, launch_binding
from twofold.kbs import snp
from twofold.kbs.audit import AuditLog, read_audit, verify_chain
from twofold.kbs.policy import parse_policy
from twofold.kbs.server import API, KeyBroker, make_app

from .test_snp import AT, MEASUREMENT, build_report
from .test_snp import amd as amd

TCB = "cd" * 32
PUBLIC = bytes(range(32))


def _flip(raw: bytes, offset: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 1
    return bytes(out)


def _collateral(amd, directory: Path, *, crl: bytes | None = None) -> Path:
    directory.mkdir()
    (directory / "ark.der").write_bytes(amd.ark)
    (directory / "ask.der").write_bytes(amd.ask)
    (directory / "vcek.der").write_bytes(amd.vcek())
    (directory / "crl.der").write_bytes(amd.crl() if crl is None else crl)
    return directory


def _policy(collateral: Path, **platform) -> object:
    rule = {"collateral": str(collateral), "measurements": [MEASUREMENT.hex()], **platform}
    return parse_policy({"version": 3, "backends": ["sev-snp"], "platforms": {"sev-snp": rule},
                         "measurements": {TCB: {"name": "twofold", "datasets": ["*"]}}})


async def _attest(broker: KeyBroker, make_report) -> tuple[int, dict]:
    """One challenge and one attestation against the broker on a free loopback port."""
    runner = web.AppRunner(make_app(broker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}{API}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.post(f"{base}/auth", json={"backend": "sev-snp"}) as answer:
                challenge = await answer.json()
            report = make_report(challenge["nonce"], broker.identity.digest())
            evidence = Evidence(backend="sev-snp", measurement=TCB, nonce=challenge["nonce"], report_data="",
                                timestamp=time.time(), config=broker.identity.digest(),
                                quote=base64.b64encode(report).decode())
            body = {"session": challenge["session"], "evidence": evidence.to_dict(),
                    "public_key": base64.b64encode(PUBLIC).decode()}
            async with http.post(f"{base}/attest", json=body) as answer:
                return answer.status, await answer.json()
    finally:
        await runner.cleanup()


def _report(amd, *, nonce_override: str | None = None, then=None, **fields):
    def make(nonce: str, config: str) -> bytes:
        values = {"report_data": hardware_report_data(nonce_override or nonce, PUBLIC, config),
                  "host_data": launch_binding(TCB, config), **fields}
        raw = build_report(amd.vcek_key, **values)
        return then(raw) if then else raw
    return make


CASES = {
    # name: (report changes, platform rule changes, collateral changes, pin the fake root, reason)
    "a flipped bit in the report body": ({"then": lambda raw: _flip(raw, 0x90)}, {}, {}, True,
                                         "report signature does not verify"),
    "a flipped bit in the signature": ({"then": lambda raw: _flip(raw, 0x2A0 + 5)}, {}, {}, True,
                                       "report signature does not verify"),
    "a chain to another root": ({}, {}, {}, False, "not a pinned AMD root"),
    "a debug guest": ({"policy": 0x30000 | 1 << 19}, {}, {}, True, "allows debugging"),
    "a stale TCB": ({}, {"min_tcb": {"snp": 9}}, {}, True, "below the minimum 9"),
    "another nonce's report_data": ({"nonce_override": "an-earlier-nonce"}, {}, {}, True, "report_data"),
    "an expired CRL": ({}, {}, {"expired_crl": True}, True, "CRL expired"),
    "an unknown launch measurement": ({"measurement": bytes(48)}, {}, {}, True, "is not allowed"),
    "a revoked VCEK": ({}, {}, {"revoke": 7}, True, "revoked by the CRL"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_report_is_refused_for_its_reason_and_audited(amd, keystore, tmp_path, monkeypatch,
                                                               case):
    report_changes, rule_changes, collateral_changes, pin_fake, reason = CASES[case]
    if pin_fake:
        monkeypatch.setattr(snp, "PINNED_ARK_SHA256", amd.trusted)
    crl = None
    if collateral_changes.get("expired_crl"):
        crl = amd.crl(next_update=AT - timedelta(days=1))
    elif "revoke" in collateral_changes:
        crl = amd.crl(revoked=[collateral_changes["revoke"]])
    collateral = _collateral(amd, tmp_path / "collateral", crl=crl)
    audit_path = tmp_path / "audit.jsonl"
    broker = KeyBroker(keystore, _policy(collateral, **rule_changes), AuditLog(audit_path))

    status, answer = asyncio.run(_attest(broker, _report(amd, **report_changes)))

    assert status == 403 and reason in answer["error"] and "token" not in answer
    denials = [entry for entry in read_audit(audit_path) if entry["action"] == "attest"]
    assert len(denials) == 1 and denials[0]["event"] == "deny" and reason in denials[0]["reason"]
    assert denials[0]["measurement"] == TCB
    verify_chain(audit_path)


def test_the_same_broker_grants_an_honest_report(amd, keystore, tmp_path, monkeypatch):
    """The control: with nothing wrong, the very same setup is granted, and the grant is audited."""
    monkeypatch.setattr(snp, "PINNED_ARK_SHA256", amd.trusted)
    audit_path = tmp_path / "audit.jsonl"
    broker = KeyBroker(keystore, _policy(_collateral(amd, tmp_path / "collateral")), AuditLog(audit_path))
    status, answer = asyncio.run(_attest(broker, _report(amd)))
    assert status == 200 and answer["token"]
    entries = [entry for entry in read_audit(audit_path) if entry["action"] == "attest"]
    assert [(e["event"], e["backend"]) for e in entries] == [("grant", "sev-snp")]


def test_the_reasons_are_distinct():
    reasons = [case[-1] for name, case in CASES.items() if name != "a flipped bit in the signature"]
    assert len(set(reasons)) == len(reasons)
