"""Attacks by the untrusted side (driver, executor host, network) on the trust boundary, each refused.

Every test performs one attack from docs/threat-model.md against the real processes (key broker and enclave
started from their entry points) and checks that it fails, and how.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from twofold.crypto import sealing
from twofold.crypto.broker_identity import BrokerIdentity
from twofold.crypto.hpke_seal import seal_to
from twofold.data.models import ModelFile, seal_model_file
from twofold.enclave.broker_client import BrokerAddress, BrokerSession, release_info
from twofold.enclave.kernels import arrays
from twofold.errors import AttestationError, ConfigError, IntegrityError, PolicyError, ProtocolError, ServiceError
from twofold.services import start_enclave
from twofold.spark.enclave_client import EnclaveClient

RELAY_KEY = bytes(range(32))  # the MAC key a relay would like the enclave to use


class _Relay(BaseHTTPRequestHandler):
    """Forwards to the real broker, but answers any release of a manifest MAC key with a key of its own."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=10)  # type: ignore[attr-defined]
        upstream.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
        response = upstream.getresponse()
        status, data = response.status, response.read()
        upstream.close()
        request = json.loads(body or b"{}")
        if self.path.endswith("/attest") and status == 200:
            self.server.enclave_key = base64.b64decode(request["public_key"])  # type: ignore[attr-defined]
        if self.path.endswith("/unwrap") and status == 200:
            reply = json.loads(data)
            for item, asked in zip(reply["items"], request["items"], strict=True):
                context = base64.b64decode(asked["context"])
                if context.startswith(b"manifest-mac|"):
                    enclave = X25519PublicKey.from_public_bytes(self.server.enclave_key)  # type: ignore[attr-defined]
                    sealed = seal_to(enclave, RELAY_KEY, release_info(request["token"], context))
                    item["sealed"] = base64.b64encode(sealed).decode()
                    self.server.substituted += 1  # type: ignore[attr-defined]
            data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _relay(broker):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Relay)
    host, port = broker.url.removeprefix("http://").split(":")
    server.upstream, server.substituted, server.enclave_key = (host, int(port)), 0, b""  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _manifest(dataset) -> bytes:
    return (dataset.path / "manifest.json").read_bytes()


def test_relay_cannot_inject_a_manifest_mac_key(broker, datasets, tmp_path):
    """A relay between enclave and broker forwards the genuine attestation and keys, but answers the manifest's
    MAC key with its own (so that it could later open every "sealed" output): the enclave refuses the release,
    because the broker signs every release and the relay cannot."""
    dataset = datasets["allowed"]
    with _relay(broker) as (relay, url):
        process = start_enclave(tmp_path / "relayed.sock", url, broker.identity_path, log_path=tmp_path / "r.log")
        try:
            with EnclaveClient(process.address) as client, pytest.raises(IntegrityError):
                client.call("open_dataset", manifest=_manifest(dataset))
        finally:
            process.stop()
        assert relay.substituted >= 1  # the attack was attempted


def test_enclave_pinning_another_broker_gets_no_keys(broker, tmp_path):
    """The host starts the enclave with a broker identity of its own choosing: its evidence names that identity,
    and the real broker refuses to serve it."""
    forged = BrokerIdentity(broker.identity.keystore_id, Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
                            broker.identity.owner_public_key)
    path = tmp_path / "forged-identity.json"
    path.write_text(forged.to_json())
    with pytest.raises(ServiceError, match="pins another key broker"):
        start_enclave(tmp_path / "forged.sock", broker.url, path, log_path=tmp_path / "f.log")
    assert any("pins another key broker" in d["reason"] for d in broker.denials())


def test_plain_http_is_refused_beyond_loopback(keystore):
    identity = keystore.broker_identity()
    with pytest.raises(ConfigError, match="not on loopback"):
        BrokerSession("http://10.1.2.3:8650", "00" * 32, lambda n, p, c: None, identity)
    BrokerSession("http://127.0.0.1:8650", "00" * 32, lambda n, p, c: None, identity)  # loopback: allowed


# -- the owner's rules, enforced by the enclave ------------------------------------------------------------------


@pytest.fixture
def ruled(make_broker, datasets, tmp_path):
    """An enclave whose broker's policy sets rules for the allowed dataset; yields (client, dataset, broker)."""
    started = []

    def make(rule: dict):
        broker = make_broker(version=3, datasets={datasets["allowed"].dataset_id: rule})
        process = start_enclave(tmp_path / f"ruled{len(started)}.sock", broker.url, broker.identity_path,
                                log_path=tmp_path / f"ruled{len(started)}.log")
        started.append(process)
        client = EnclaveClient(process.address)
        client.call("open_dataset", manifest=_manifest(datasets["allowed"]))
        for index in range(2):
            client.call("load_partition_from", dataset_id=datasets["allowed"].dataset_id, index=index,
                        directory=str(datasets["allowed"].path))
        return client, datasets["allowed"], broker

    yield make
    for process in started:
        process.stop()


def _terms(dataset, **changes) -> dict:
    return {"dataset_id": dataset.dataset_id, "algorithm": "logreg", "columns": ["x"], "label": "label",
            "params": {"maxIter": 3, "tol": 1e-6}, "release": "sealed", "job": "job-attack", **changes}


def _one_pass(client, terms: dict, state: bytes, iteration: int = 0) -> dict:
    stats = [client.call("fit_stats", **terms, index=i, iteration=iteration, model_state=state)["stats"]
             for i in range(2)]
    return {"iteration": iteration, "model_state": state, "stats": stats, "indices": [0, 1]}


def test_release_mode_cannot_be_downgraded(ruled):
    client, dataset, _ = ruled({"release": ["sealed"]})
    client.call("fit_init", **_terms(dataset))  # sealed: allowed
    with pytest.raises(PolicyError, match="release='statistics'"):
        client.call("fit_init", **_terms(dataset, release="statistics"))
    with pytest.raises(PolicyError):  # nor at any later step of a fit
        client.call("fit_stats", **_terms(dataset, release="statistics"), index=0, iteration=0, model_state=b"")


def test_algorithms_columns_and_parameter_ranges_are_enforced(ruled):
    client, dataset, _ = ruled({"algorithms": ["logreg"], "columns": ["x", "label"], "params": {"maxIter": [1, 10]}})
    client.call("fit_init", **_terms(dataset))
    with pytest.raises(PolicyError, match="algorithm 'kmeans'"):
        client.call("fit_init", **_terms(dataset, algorithm="kmeans", label="", params={"k": 2}))
    with pytest.raises(PolicyError, match="column"):
        client.call("fit_init", **_terms(dataset, columns=["name"]))
    with pytest.raises(PolicyError, match="maxIter is outside"):
        client.call("fit_init", **_terms(dataset, params={"maxIter": 500}))


def test_statistics_only_at_states_the_enclave_sealed(ruled):
    """The driver cannot choose the query points (k-means centres, say): a state it made itself is refused."""
    client, dataset, _ = ruled({})
    terms = _terms(dataset, algorithm="kmeans", label="", params={"k": 2}, release="statistics")
    client.call("fit_init", **terms)
    chosen = arrays.pack({"phase": np.array([1.0]), "centers": np.array([[2.0], [1e9]]), "iterations": np.zeros(1)})
    with pytest.raises(IntegrityError):
        client.call("fit_stats", **terms, index=0, iteration=1, model_state=chosen)


def test_fit_parameters_are_bound_and_combine_is_single_use(ruled):
    """Varying ``tol`` between combines (a binary-search oracle on the "done" bit) breaks the binding; replaying a
    combine returns the same answer; combining the same iteration from other inputs is refused."""
    client, dataset, _ = ruled({})
    terms = _terms(dataset)
    state = client.call("fit_init", **terms)["state"]
    step = _one_pass(client, terms, state)
    first = client.call("fit_combine", **terms, **step)
    assert client.call("fit_combine", **terms, **step) == first  # a retry: the same answer, nothing new
    with pytest.raises(IntegrityError):
        client.call("fit_combine", **_terms(dataset, params={"maxIter": 3, "tol": 0.5}), **step)
    with pytest.raises(ProtocolError, match="already combined"):
        client.call("fit_combine", **terms, **{**step, "stats": list(reversed(step["stats"]))})
    with pytest.raises(ProtocolError, match="converged"):  # no model from a fit that has not finished
        client.call("fit_finalize", **terms, iteration=1, model_state=first["state"], model_id="m-early")
    second = client.call("fit_combine", **terms, **_one_pass(client, terms, first["state"], 1))
    with pytest.raises(ProtocolError, match="already combined"):  # an earlier pass, once a later one is done
        client.call("fit_combine", **terms, **step)
    assert second["state"] != first["state"]


def test_sealed_model_only_predicts_with_its_own_label_and_features(ruled, keystore):
    client, dataset, _ = ruled({})
    terms = _terms(dataset)
    state = client.call("fit_init", **terms)["state"]
    iteration, done = 0, False
    while not done:
        reply = client.call("fit_combine", **terms, **_one_pass(client, terms, state, iteration))
        state, done, iteration = reply["state"], reply["done"], iteration + 1
    sealed = client.call("fit_finalize", **terms, iteration=iteration, model_state=state, model_id="m-1")
    assert sealed["weights"] == b""  # sealed release: nothing in the clear
    model = ModelFile("logreg", "partitioned", "sealed", dataset.dataset_id, "m-1", dataset.manifest.wrapped_mac_key,
                      ["x"], "label", terms["params"], sealed["model"], job=terms["job"], passes=iteration)
    assert set(model.open_arrays(keystore)) >= {"coefficients", "intercept"}  # the owner opens it
    own = {**model.description(), "model_id": "m-1", "mac_key": model.mac_key, "sealed": model.sealed}
    client.call("predict", dataset_id=dataset.dataset_id, index=0, job="job-p", model=own, with_label=True)
    for changed in ({"label": "x"}, {"columns": ["label"]}, {"passes": iteration + 1}):
        with pytest.raises(IntegrityError):  # another label or feature, or an edited transcript: does not open
            client.call("predict", dataset_id=dataset.dataset_id, index=0, job="job-p", model={**own, **changed},
                        with_label=True)


def test_seal_model_of_driver_arrays_is_gone(ruled):
    client, dataset, _ = ruled({})
    with pytest.raises(ProtocolError, match="unknown ecall"):
        client.call("seal_model", dataset_id=dataset.dataset_id, algorithm="logreg", model_id="m", model=b"")


def test_statistics_release_respects_the_minimum_group_size(ruled):
    """Naive Bayes on 4 rows (2 per class): its clear weights would describe groups of 2 rows."""
    client, dataset, _ = ruled({"min_group_size": 3})
    for release, allowed in (("sealed", True), ("statistics", False)):
        terms = _terms(dataset, algorithm="naive_bayes", params={"modelType": "gaussian"}, release=release)
        state, iteration, done = client.call("fit_init", **terms)["state"], 0, False
        while not done:
            reply = client.call("fit_combine", **terms, **_one_pass(client, terms, state, iteration))
            state, done, iteration = reply["state"], reply["done"], iteration + 1
        finalize = {**terms, "iteration": iteration, "model_state": state, "model_id": f"m-{release}"}
        if allowed:
            client.call("fit_finalize", **finalize)
        else:
            with pytest.raises(PolicyError, match="fewer than 3 rows"):
                client.call("fit_finalize", **finalize)


def test_owner_detects_an_edited_model_file(keystore, datasets):
    dataset = datasets["allowed"]
    model = seal_model_file(keystore, ModelFile("linreg", "whole", "whole", dataset.dataset_id, "m-9",
                                                dataset.manifest.wrapped_mac_key, ["x"], "label", {"regParam": 0.0},
                                                b""), sealing.pack({"w": np.ones(1)}))
    assert sealing.unpack(model.open(keystore))["w"][0] == 1.0
    for field, value in (("columns", ["name"]), ("label", "x"), ("params", {"regParam": 1.0}), ("passes", 7)):
        edited = ModelFile(**{**model.__dict__, field: value})
        with pytest.raises(IntegrityError):
            edited.open(keystore)


# -- the key broker's side ---------------------------------------------------------------------------------------


def test_a_partly_denied_request_releases_and_audits_nothing(broker, datasets):
    session = broker.session()
    allowed = (datasets["allowed"].manifest.wrapped_mac_key, f"manifest-mac|{datasets['allowed'].dataset_id}")
    other = (datasets["other"].manifest.wrapped_mac_key, f"manifest-mac|{datasets['other'].dataset_id}")
    before = len(broker.audit())
    with pytest.raises(AttestationError, match="not allowed"):
        session.unwrap_many([(allowed[0], allowed[1].encode()), (other[0], other[1].encode())])
    after = broker.audit()[before:]
    assert not any(e["event"] == "grant" and e["action"] == "unwrap" for e in after)
    assert any(e["event"] == "deny" and e.get("dataset") == datasets["other"].dataset_id for e in after)


def test_unauthenticated_and_malformed_requests_are_audited(broker):
    session = broker.session()
    with pytest.raises(Exception):
        session._post("unwrap", {"token": "not-a-token", "request": "r" * 32, "items": []})
    session.attest()
    with pytest.raises(ProtocolError):
        session._post("unwrap", {"token": session._token, "request": "r" * 32, "items": "not a list"})
    statuses = {e.get("status") for e in broker.denials()}
    assert {400, 401} <= statuses


def test_job_services_grant_only_the_mode_in_use(home, keystore, datasets):
    """The embedded default for a partitioned job admits the partitioned TCB only: whole-mode code (which any
    Spark task could run to read_encrypted) is denied the keys."""
    from tests.conftest import PASSPHRASE

    from twofold.enclave.measure import current_measurement, whole_measurement
    from twofold.spark.embedded import job_services
    from twofold.spark.whole import attested_session

    with job_services([datasets["allowed"].dataset_id], mode="partitioned", keystore_dir=keystore.directory,
                      passphrase=PASSPHRASE) as services:
        allowed = json.loads(Path(services.workdir, "policy.json").read_text())["measurements"]
        assert set(allowed) == {current_measurement()} and whole_measurement() not in allowed
        with pytest.raises(AttestationError, match="not allowed by the policy"):
            attested_session(BrokerAddress(services.kbs_url, services.enclave.broker_identity))


def test_partitions_are_read_into_private_memory_never_mapped(keystore, datasets, monkeypatch):
    """Storage could change a memory-mapped file under the decryption: the enclave reads each file once into
    its own memory (here, mapping is made to fail: the read path must not need it)."""
    import pyarrow as pa

    from twofold.crypto.mac import mac_context
    from twofold.crypto.pme import PmeSession
    from twofold.crypto.release_rules import DatasetRule
    from twofold.enclave.cache import PartitionCache
    from twofold.enclave.state import EnclaveState, OpenedDataset

    dataset = datasets["allowed"]
    mac_key = keystore.unwrap(dataset.manifest.wrapped_mac_key, mac_context(dataset.dataset_id))
    state = EnclaveState("simulation", "00" * 32, keystore, PartitionCache(1 << 20))  # type: ignore[arg-type]
    state.datasets[dataset.dataset_id] = OpenedDataset(dataset.manifest, PmeSession(keystore, dataset.dataset_id),
                                                       mac_key, DatasetRule())

    def refuse(*args, **kwargs):
        raise AssertionError("the enclave memory-mapped untrusted storage")

    monkeypatch.setattr(pa, "memory_map", refuse)
    table = state.load_partition_from(dataset.dataset_id, 0, str(dataset.path))
    assert table.num_rows == dataset.manifest.files[0].rows


def test_a_tightened_policy_holds_from_the_next_fit(ruled):
    """The owner restarts her broker with a stricter rule: an enclave that opened the dataset before is held to
    it from its next fit on (it asks the broker for the rule at every fit_init)."""
    client, dataset, broker = ruled({"release": ["sealed", "statistics"]})
    client.call("fit_init", **_terms(dataset, release="statistics"))
    port = broker.port
    broker.process.stop()
    doc = json.loads(broker.policy_path.read_text())
    doc["datasets"] = {dataset.dataset_id: {"release": ["sealed"]}}
    broker.policy_path.write_text(json.dumps(doc))
    broker.start(port=port)
    with pytest.raises(PolicyError, match="release='statistics'"):
        client.call("fit_init", **_terms(dataset, release="statistics"))
    client.call("fit_init", **_terms(dataset))  # sealed: still allowed
