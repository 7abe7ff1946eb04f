"""Attestation and key release against a key broker started from the CLI; each denial leaves an audit entry."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from twofold.crypto.evidence import report_data_for
from twofold.crypto.hpke_seal import open_sealed_to
from twofold.crypto.mac import mac_context
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerSession, release_info
from twofold.enclave.measure import current_measurement
from twofold.errors import AttestationError, ConfigError, IntegrityError, ServiceError


def _mac_item(dataset):
    return dataset.manifest.wrapped_mac_key, mac_context(dataset.dataset_id)


def test_attested_session_gets_allowed_keys(broker, datasets, keystore):
    session = broker.session()
    session.attest()
    wrapped, context = _mac_item(datasets["allowed"])
    assert session.unwrap(wrapped, context) == keystore.unwrap(wrapped, context)
    assert session.keystore_id == keystore.keystore_id
    assert session.owner_public_key.public_bytes_raw() == keystore.owner_public_key.public_bytes_raw()
    grants = [e for e in broker.audit() if e["event"] == "grant"]
    assert [e["action"] for e in grants] == ["attest", "unwrap"]
    assert "SIMULATION" in broker.process.log_text()


def _assert_denied(broker, session, reason):
    with pytest.raises(AttestationError, match=reason):
        session.attest()
    assert any(reason.split("|")[0] in d["reason"] for d in broker.denials()), broker.denials()


def test_unknown_measurement_is_denied(broker):
    _assert_denied(broker, broker.session(measurement="ab" * 32), "not allowed by the policy")


def test_bad_signature_is_denied(broker):
    platform = SimulationAttester(load_or_create_platform_key())
    other = SimulationAttester(Ed25519PrivateKey.generate())

    def forged(nonce, pub, config):
        evidence = platform.evidence(current_measurement(), nonce, pub, config)
        return dataclasses.replace(evidence, signature=other.evidence(evidence.measurement, nonce, pub,
                                                                      config).signature)

    _assert_denied(broker, broker.session(evidence_for=forged), "signature is invalid")


def test_untrusted_platform_is_denied(broker):
    stranger = SimulationAttester(Ed25519PrivateKey.generate())
    session = broker.session(evidence_for=lambda n, p, c: stranger.evidence(current_measurement(), n, p, c))
    _assert_denied(broker, session, "platform the policy does not trust")


def test_report_data_must_match_the_key(broker):
    attester = SimulationAttester(load_or_create_platform_key())
    session = broker.session(evidence_for=lambda n, p, c: attester.evidence(current_measurement(), n, b"\x01" * 32,
                                                                             c))
    _assert_denied(broker, session, "report_data does not match")


def test_reused_nonce_is_denied(broker):
    attester = SimulationAttester(load_or_create_platform_key())
    session = broker.session()
    challenge = session._post("auth", {"backend": "simulation"})
    body = {"session": challenge["session"],
            "evidence": attester.evidence(current_measurement(), challenge["nonce"], session.public_key_raw,
                                         broker.identity.digest()).to_dict(),
            "public_key": base64.b64encode(session.public_key_raw).decode()}
    session._post("attest", body)
    with pytest.raises(AttestationError, match="already used"):
        session._post("attest", body)
    assert any("nonce reuse" in d["reason"] for d in broker.denials())


def test_expired_nonce_is_denied(make_broker):
    broker = make_broker(nonce_ttl_seconds=0.5)
    attester = SimulationAttester(load_or_create_platform_key())

    def slow(nonce, pub, config):
        time.sleep(1.0)
        return attester.evidence(current_measurement(), nonce, pub, config)

    _assert_denied(broker, broker.session(evidence_for=slow), "expired")


def test_simulation_not_allowed_by_policy(make_broker):
    broker = make_broker(allow_simulation=False)
    _assert_denied(broker, broker.session(), "simulation evidence is not allowed")


def test_expired_policy_entry_is_denied(make_broker):
    broker = make_broker()
    doc = json.loads(broker.policy_path.read_text())
    for rule in doc["measurements"].values():
        rule["expires"] = "2020-01-01T00:00:00+00:00"
    broker.policy_path.write_text(json.dumps(doc))
    broker.process.stop()
    broker.start()
    _assert_denied(broker, broker.session(), "expired")


def test_dataset_not_allowed_for_measurement(broker, datasets):
    session = broker.session()
    session.attest()
    with pytest.raises(AttestationError, match="not allowed"):
        session.unwrap(*_mac_item(datasets["other"]))
    assert any(d["action"] == "unwrap" and d["dataset"] == datasets["other"].dataset_id for d in broker.denials())


def test_key_of_one_dataset_cannot_be_presented_as_another(broker, datasets):
    session = broker.session()
    session.attest()
    wrapped, _ = _mac_item(datasets["other"])
    with pytest.raises(AttestationError, match="rejected"):
        session.unwrap(wrapped, mac_context(datasets["allowed"].dataset_id))


def test_restart_forces_a_fresh_attestation(broker, datasets):
    session = broker.session()
    session.attest()
    item = _mac_item(datasets["allowed"])
    session.unwrap(*item)
    port = broker.port
    broker.process.stop()
    with pytest.raises(ServiceError, match="unreachable"):
        session.unwrap(*item)
    broker.start(port=port)
    assert session.unwrap(*item)
    assert session.attestations == 2


def test_fifty_concurrent_attestations(broker, datasets, keystore):
    item = _mac_item(datasets["allowed"])
    expected = keystore.unwrap(*item)

    def one(_):
        session = broker.session()
        session.attest()
        return session.unwrap(*item)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert results == [expected] * 50
    assert sum(1 for e in broker.audit() if e["event"] == "grant" and e["action"] == "attest") == 50


def test_audit_log_holds_no_key_bytes(broker, datasets, keystore):
    session = broker.session()
    session.attest()
    key = session.unwrap(*_mac_item(datasets["allowed"]))
    raw = broker.audit_path.read_bytes()
    assert key not in raw and key.hex().encode() not in raw and base64.b64encode(key) not in raw


def test_released_key_is_bound_to_the_session_key(broker, datasets):
    session = broker.session()
    session.attest()
    wrapped, context = _mac_item(datasets["allowed"])
    reply = session._post("unwrap", {"token": session._token, "request": "r" * 32, "items": [
        {"wrapped": wrapped, "context": base64.b64encode(context).decode()}]})
    other = BrokerSession(broker.url, current_measurement(), lambda n, p, c: None, broker.identity)

    with pytest.raises(IntegrityError):
        open_sealed_to(other._private, base64.b64decode(reply["items"][0]["sealed"]),
                       release_info(session._token, context))
    assert report_data_for(session.public_key_raw) != report_data_for(other.public_key_raw)


def test_broker_rejects_malformed_requests(broker):
    session = broker.session()
    for endpoint, body in [("attest", {"session": "x"}), ("unwrap", {"token": "nope", "items": []})]:
        with pytest.raises(Exception):
            session._post(endpoint, body)
    session.attest()  # still serving


def test_bad_url_is_a_config_error(keystore):
    with pytest.raises(ConfigError):
        BrokerSession("file:///etc/passwd", "00" * 32, lambda n, p, c: None, keystore.broker_identity())
