"""The key broker over TLS (how a real deployment runs it), with the enclave's client checking the certificate."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from twofold.crypto.mac import mac_context
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerSession
from twofold.enclave.measure import current_measurement
from twofold.errors import ConfigError, ServiceError
from twofold.kbs.authoring import write_policy
from twofold.services import ServiceProcess


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twofold-kbs")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "kbs.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "kbs.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "kbs.pem", tmp_path / "kbs.key"


def test_attestation_and_release_over_tls(home, keystore, datasets, tmp_path):
    cert, key = _self_signed(tmp_path)
    dataset = datasets["allowed"]
    write_policy(tmp_path / "policy.json", [dataset.dataset_id])
    kbs = ServiceProcess("key broker", ["kbs", "serve", "--keystore", str(keystore.directory), "--policy",
                                        str(tmp_path / "policy.json"), "--audit-log", str(tmp_path / "a.jsonl"),
                                        "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key),
                                        "--tls-ca", str(cert)])
    try:
        assert kbs.address.startswith("https://")
        attester = SimulationAttester(load_or_create_platform_key())
        measurement = current_measurement()

        def evidence(nonce, pub, config):
            return attester.evidence(measurement, nonce, pub, config)

        item = (dataset.manifest.wrapped_mac_key, mac_context(dataset.dataset_id))
        identity = keystore.broker_identity(cert.read_text())
        session = BrokerSession(kbs.address, measurement, evidence, identity)
        assert session.unwrap(*item) == keystore.unwrap(*item)
        (tmp_path / "second-ca").mkdir()
        other_cert, _ = _self_signed(tmp_path / "second-ca")
        untrusting = BrokerSession(kbs.address, measurement, evidence,  # pins another CA: the handshake fails
                                   keystore.broker_identity(other_cert.read_text()))
        with pytest.raises(ServiceError, match="unreachable"):
            untrusting.attest()
        with pytest.raises(ConfigError, match="TLS CA"):  # https without a pinned CA is refused outright
            BrokerSession(kbs.address, measurement, evidence, keystore.broker_identity())
    finally:
        kbs.stop()
