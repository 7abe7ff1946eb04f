"""A keystore, two datasets and helpers to run the key broker and enclave from the CLI on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from twofold.data import EncryptedDataset
from twofold.enclave.attester import SimulationAttester, load_or_create_platform_key
from twofold.enclave.broker_client import BrokerSession
from twofold.enclave.measure import current_measurement
from twofold.kbs.authoring import write_policy
from twofold.services import start_enclave, start_kbs

from ..conftest import PASSPHRASE


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOFOLD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TWOFOLD_PASSPHRASE", PASSPHRASE)
    return tmp_path / "home"


@pytest.fixture
def datasets(keystore, tmp_path):
    tables = {
        "allowed": pa.table({"x": [1.5, 2.5, 3.5, 4.5], "name": ["SECRETVALUE-a", "b", "c", "d"],
                             "label": [0, 1, 0, 1]}),
        "other": pa.table({"x": [9.0, 8.0], "name": ["e", "f"], "label": [1, 0]}),
    }
    return {name: EncryptedDataset.write(t, tmp_path / name, keystore, label="label", rows_per_file=2)
            for name, t in tables.items()}


class Broker:
    """A key broker started from the CLI, its policy and audit log."""

    def __init__(self, keystore, workdir: Path, allowed, **policy_overrides) -> None:
        self.keystore, self.workdir = keystore, workdir
        self.policy_path = workdir / "policy.json"
        self.audit_path = workdir / "audit.jsonl"
        write_policy(self.policy_path, [d.dataset_id for d in allowed])
        if policy_overrides:
            doc = json.loads(self.policy_path.read_text())
            doc.update(policy_overrides)
            self.policy_path.write_text(json.dumps(doc))
        self.identity = keystore.broker_identity()
        self.identity_path = workdir / "broker-identity.json"
        self.identity_path.write_text(self.identity.to_json())
        self.process = None
        self.start()

    def start(self, port: int = 0) -> None:
        self.process = start_kbs(self.keystore.directory, self.policy_path, self.audit_path, port=port,
                                 log_path=self.workdir / "kbs.log")

    @property
    def url(self) -> str:
        return self.process.address

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def denials(self) -> list[dict]:
        return [entry for entry in self.audit() if entry["event"] == "deny"]

    def session(self, evidence_for=None, measurement: str | None = None) -> BrokerSession:
        """A client session that attests like the enclave does (optionally with crafted evidence)."""
        measurement = measurement or current_measurement()
        attester = SimulationAttester(load_or_create_platform_key())
        evidence_for = evidence_for or (lambda nonce, pub, config: attester.evidence(measurement, nonce, pub, config))
        return BrokerSession(self.url, measurement, evidence_for, self.identity)


@pytest.fixture
def broker(home, keystore, datasets, tmp_path):
    work = tmp_path / "kbs"
    work.mkdir()
    made = Broker(keystore, work, [datasets["allowed"]])
    yield made
    made.process.stop()


@pytest.fixture
def make_broker(home, keystore, datasets, tmp_path):
    started = []

    def make(**overrides) -> Broker:
        work = tmp_path / f"kbs{len(started)}"
        work.mkdir()
        started.append(Broker(keystore, work, [datasets["allowed"]], **overrides))
        return started[-1]

    yield make
    for made in started:
        made.process.stop()


@pytest.fixture
def enclave(broker, tmp_path):
    process = start_enclave(tmp_path / "enclave.sock", broker.url, broker.identity_path,
                            log_path=tmp_path / "enclave.log")
    yield process
    process.stop()
