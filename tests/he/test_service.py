"""MU and SU as real server processes started through the CLI, over mutually authenticated TLS on loopback."""

from __future__ import annotations

import datetime
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from twofold.crypto import dtpkc
from twofold.errors import KeyAccessError, ServiceError
from twofold.he import codec, protocol
from twofold.he.client import Party, read_csv
from twofold.he.keys import load_system
from twofold.he.models import nb
from twofold.he.transport import client_context, connect

from .servers import Server, check_predictions, free_port, he, make_system, reference_predictions

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Path:
    return make_system(tmp_path_factory.mktemp("he"))


@pytest.fixture(scope="module")
def servers(system):
    su = Server(system, "su", extra=("--lr-pool", "300"))  # Priv-LR runs draw precomputed values, then inline
    mu = Server(system, "mu", extra=("--su", su.address, "--state", str(system.parent / "mu-state"), "--lr-pool",
                                     "300"))
    yield mu, su
    mu.stop()
    su.stop()
    assert mu.proc.poll() is not None and su.proc.poll() is not None


def test_upload_train_predict_and_online_update(system, servers):
    mu, _ = servers
    root = system.parent
    for owner in ("olga", "omar"):
        result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", owner, str(root / f"{owner}.csv"),
                    "--label", "label", "--chunk-records", "16")
        assert result.returncode == 0, result.stderr
    result = he("train", "--system", str(system), "--mu", mu.address, "--chunk", "9")
    assert result.returncode == 0, result.stderr
    assert "on 70 records from 2 owner(s)" in result.stderr
    result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "alice", str(root / "queries.csv"),
                "--label", "label")
    assert result.returncode == 0, result.stderr
    refs, schema = reference_predictions(system, [root / "olga.csv", root / "omar.csv"], root / "queries.csv")
    check_predictions(result.stdout, refs, schema)
    # online update: a new owner joins; the model is rebuilt from the encrypted aggregates, not from records
    result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", "otto", str(root / "otto.csv"),
                "--label", "label")
    assert result.returncode == 0, result.stderr
    assert he("train", "--system", str(system), "--mu", mu.address).returncode == 0
    result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "carl", str(root / "queries.csv"))
    refs, schema = reference_predictions(system, [root / f"{o}.csv" for o in ("olga", "omar", "otto")],
                                         root / "queries.csv")
    check_predictions(result.stdout, refs, schema)
    status = __import__("json").loads(he("status", "--system", str(system), "--mu", mu.address).stdout)
    assert status["owners"] == {"olga": 40, "omar": 30, "otto": 20}
    for link in ("owner", "client", "admin", "su"):
        assert status["links"][link]["sent"] > 0 and status["links"][link]["received"] > 0
    assert status["su"]["requests"] > 0
    # the same chunk cannot be uploaded twice
    result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", "otto", str(root / "otto.csv"),
                "--label", "label")
    assert result.returncode == 6 and "already uploaded" in result.stderr


def dying_su_and_mu(system: Path, state: Path, exit_after: int) -> tuple[Server, Server, int]:
    """An SU that exits after ``exit_after`` requests, an MU keeping its state in ``state``, and SU's port (for
    restarting it where MU expects it)."""
    port = free_port()
    su = Server(system, "su", port, ("--exit-after", str(exit_after)))
    try:
        mu = Server(system, "mu", extra=("--su", su.address, "--state", str(state)))
    except BaseException:
        su.stop()
        raise
    return su, mu, port


def test_su_killed_mid_training_then_resumes(system, tmp_path):
    root = system.parent
    su, mu, port = dying_su_and_mu(system, tmp_path / "state", 3)
    try:
        assert he("upload", "--system", str(system), "--mu", mu.address, "--owner", "olga", str(root / "olga.csv"),
                  "--label", "label").returncode == 0
        result = he("train", "--system", str(system), "--mu", mu.address, "--chunk", "5")
        assert result.returncode == 9
        assert "SU failed during training" in result.stderr and "rerun train to resume" in result.stderr
        su.proc.wait(10)
        su = Server(system, "su", port)
        result = he("train", "--system", str(system), "--mu", mu.address, "--chunk", "5")
        assert result.returncode == 0, result.stderr
        assert "(resumed)" in result.stderr
        result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "alice",
                    str(root / "queries.csv"))
        assert result.returncode == 0, result.stderr
        refs, schema = reference_predictions(system, [root / "olga.csv"], root / "queries.csv")
        check_predictions(result.stdout, refs, schema)
    finally:
        mu.stop()
        su.stop()


def _frame(seq: int, kind: str, body: dict, version: int = 1) -> bytes:
    payload = msgpack.packb({"v": version, "seq": seq, "kind": kind, "body": body}, use_bin_type=True)
    return protocol.HEADER.pack(len(payload)) + payload


@pytest.mark.parametrize("raw, message", [
    (protocol.HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1", "malformed"),
    (protocol.HEADER.pack(1 << 31), "exceeds the limit"),
    (_frame(7, "hello", {"version": 1}), "out-of-order"),
    (_frame(0, "hello", {"version": 1}, version=2), "unsupported protocol version"),
    (_frame(0, "steal", {}), "unknown message kind"),
    (_frame(0, "upload", {"model": "nb"}), "must be a map with exactly"),
])
def test_mu_rejects_bad_frames(system, servers, raw, message):
    mu, _ = servers
    party = Party(load_system(system), "olga", mu.address)
    cert, key = load_system(system).tls_files("olga")
    channel = connect(mu.address, client_context(load_system(system).ca_pem, cert, key), "mu")
    channel.send_raw(raw)
    kind, body = channel.recv()
    assert kind == "error" and body["code"] == "protocol" and message in body["message"]
    with pytest.raises(ServiceError):
        channel.recv()  # MU closed the connection
    channel.close()
    assert party.request("hello", {"version": 1})["role"] == "mu"  # and keeps serving others


def test_ciphertexts_under_unknown_key_are_rejected(system, servers):
    mu, _ = servers
    info = load_system(system)
    params = info.params()
    stranger = dtpkc.generate_user_key(params)
    owner = Party(info, "olga", mu.address)
    schema = nb.Schema.from_dict(__import__("json").loads((system / "public" / "schema.json").read_text()))
    lay = nb.layout_for(params, schema)
    cts = nb.encrypt_record(lambda m: dtpkc.encrypt(stranger.public, m), lay, [0] * len(schema.features), 0)
    body = {"model": "nb", "key_id": codec.key_id(stranger.public), "chunk": "x", "records": 1,
            "cts": [codec.ct_to_bytes(params, c) for c in cts]}
    with pytest.raises(KeyAccessError, match="not registered"):
        owner.request("upload", body)
    client = Party(info, "carl", mu.address)  # a client may not use another client's key
    alice = info.party_key("alice", params).public
    with pytest.raises(KeyAccessError, match="not registered"):
        client.request("predict", {"model": "nb", "key_id": codec.key_id(alice), "queries": []})
    with pytest.raises(KeyAccessError, match="may not send train"):
        owner.request("train", {"model": "nb", "chunk": 1, "iterations": 0, "fresh": False})


def _rogue_identity(tmp_path: Path, role: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                      x509.NameAttribute(NameOID.COMMON_NAME, "mallory")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "rogue.pem", tmp_path / "rogue.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_certificate_not_from_system_ca_is_refused(system, servers, tmp_path):
    mu, su = servers
    info = load_system(system)
    cert, key = _rogue_identity(tmp_path, "admin")
    ctx = client_context(info.ca_pem, cert, key)
    with pytest.raises((KeyAccessError, ServiceError)), connect(mu.address, ctx, "mu") as channel:
        channel.request("status", {})
    # a genuine owner certificate does not open SU either
    cert, key = info.tls_files("olga")
    with connect(su.address, client_context(info.ca_pem, cert, key), "su") as channel:
        kind, body = channel.recv()
        assert kind == "error"
        with pytest.raises(KeyAccessError, match="may not use this server"):
            protocol.raise_remote(body)


def _lr_reference(system: Path, files: list[Path], iterations: int, w0=None):
    from twofold.he.models import lr

    schema = lr.LRSchema.from_dict(__import__("json").loads((system / "public" / "lr.json").read_text()))
    rows, labels = [], []
    for f in files:
        r, y = read_csv(f, schema.features, "label")
        rows += r
        labels += y
    return schema, lr.reference_train(schema, rows, labels, iterations, w0)


def _check_lr(stdout: str, schema, w, queries: Path) -> None:
    from twofold.he.models import lr

    rows, _ = read_csv(queries, schema.features, "label")
    got = stdout.split()
    want = lr.reference_predict(schema, w, rows)
    for label, ref, row in zip(got, want, rows, strict=True):
        margin = sum(a * b for a, b in zip([1 << lr.FX, *schema.encode_row(row)], w, strict=True))
        if abs(margin) > 1 << (lr.FZ - 6):  # away from the boundary the answer must equal the reference
            assert schema.class_index(label) == ref


def test_lr_upload_train_predict_and_warm_start(system, servers):
    mu, _ = servers
    root = system.parent
    for owner in ("olga", "omar"):
        result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", owner, str(root / f"{owner}.csv"),
                    "--label", "label", "--algorithm", "lr")
        assert result.returncode == 0, result.stderr
    result = he("train", "--system", str(system), "--mu", mu.address, "--algorithm", "lr", "--iterations", "3",
                "--fresh")
    assert result.returncode == 0, result.stderr
    assert "trained lr on 70 records from 2 owner(s)" in result.stderr
    result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "alice", "--algorithm", "lr",
                str(root / "queries.csv"))
    assert result.returncode == 0, result.stderr
    schema, w1 = _lr_reference(system, [root / "olga.csv", root / "omar.csv"], 3)
    _check_lr(result.stdout, schema, w1, root / "queries.csv")
    # online update: a new owner's records, two more steps from the current encrypted weights
    result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", "otto", str(root / "otto.csv"),
                "--label", "label", "--algorithm", "lr")
    assert result.returncode == 0, result.stderr
    result = he("train", "--system", str(system), "--mu", mu.address, "--algorithm", "lr", "--iterations", "2")
    assert result.returncode == 0, result.stderr
    assert "(resumed)" in result.stderr and "on 90 records" in result.stderr
    result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "carl", "--algorithm", "lr",
                str(root / "queries.csv"))
    assert result.returncode == 0, result.stderr
    _, w2 = _lr_reference(system, [root / f"{o}.csv" for o in ("olga", "omar", "otto")], 2, w1)
    _check_lr(result.stdout, schema, w2, root / "queries.csv")


def test_lr_su_killed_mid_training_then_resumes(system, tmp_path):
    """SU dies after the first steps: MU keeps the last completed step; the rerun finishes the same run."""
    import re

    root = system.parent
    su, mu, port = dying_su_and_mu(system, tmp_path / "state", 8)
    train = ("train", "--system", str(system), "--mu", mu.address, "--algorithm", "lr", "--iterations", "4")
    try:
        result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", "olga", str(root / "olga.csv"),
                    "--label", "label", "--algorithm", "lr")
        assert result.returncode == 0, result.stderr
        result = he(*train)
        assert result.returncode == 9
        saved = re.search(r"progress is saved \((\d) of 4 iterations\): rerun train to resume", result.stderr)
        assert saved and 1 <= int(saved.group(1)) < 4, result.stderr
        su.proc.wait(10)
        su = Server(system, "su", port)
        result = he(*train)
        assert result.returncode == 0, result.stderr
        assert f"(resumed after iteration {saved.group(1)})" in result.stderr
        assert not (tmp_path / "state" / "checkpoints" / "lr.msgpack").exists()
        result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "alice", "--algorithm", "lr",
                    str(root / "queries.csv"))
        assert result.returncode == 0, result.stderr
        schema, w = _lr_reference(system, [root / "olga.csv"], 4)  # as if never interrupted
        _check_lr(result.stdout, schema, w, root / "queries.csv")
        result = he(*train)  # a new run on the same data starts from the stored model, not the old checkpoint
        assert result.returncode == 0 and "(resumed)" in result.stderr, result.stderr
    finally:
        mu.stop()
        su.stop()


def _dt_reference(system: Path, owners: tuple[str, ...]):
    """(schema, plaintext reference tree of depth 2 over the owners' files, the query rows)."""
    from twofold.he.models import dt

    root = system.parent
    schema = nb.Schema.from_dict(__import__("json").loads((system / "public" / "schema.json").read_text()))
    rows, labels = [], []
    for owner in owners:
        r, y = read_csv(root / f"{owner}.csv", schema.features, "label")
        rows += r
        labels += y
    queries, _ = read_csv(root / "queries.csv", schema.features, "label")
    return schema, dt.reference_train(schema, rows, labels, 2), queries


def test_dt_upload_train_predict(system, servers):
    from twofold.he.models import dt

    mu, _ = servers
    root = system.parent
    for owner in ("olga", "omar"):
        result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", owner, str(root / f"{owner}.csv"),
                    "--label", "label", "--algorithm", "dt", "--chunk-records", "16")
        assert result.returncode == 0, result.stderr
    result = he("train", "--system", str(system), "--mu", mu.address, "--algorithm", "dt", "--depth", "2")
    assert result.returncode == 0, result.stderr
    assert "trained dt on 70 records from 2 owner(s)" in result.stderr
    result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "alice", "--algorithm", "dt",
                str(root / "queries.csv"), "--label", "label")
    assert result.returncode == 0, result.stderr
    schema, tree, queries = _dt_reference(system, ("olga", "omar"))
    assert result.stdout.split() == [schema.classes[dt.reference_predict(schema, tree, q)] for q in queries]
    status = __import__("json").loads(he("status", "--system", str(system), "--mu", mu.address).stdout)
    assert status["dt_owners"] == {"olga": 40, "omar": 30} and "dt" in status["models"]
    # online update: a new owner's records go through the stored splits into the leaves' counts
    result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", "otto", str(root / "otto.csv"),
                "--label", "label", "--algorithm", "dt")
    assert result.returncode == 0, result.stderr
    result = he("train", "--system", str(system), "--mu", mu.address, "--algorithm", "dt")
    assert result.returncode == 0, result.stderr
    assert "updated dt with 20 new records (now 90 records from 3 owner(s)" in result.stderr
    result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "carl", "--algorithm", "dt",
                str(root / "queries.csv"))
    assert result.returncode == 0, result.stderr
    extra, extra_labels = read_csv(root / "otto.csv", schema.features, "label")
    updated = dt.reference_update(schema, tree, extra, extra_labels)
    assert result.stdout.split() == [schema.classes[dt.reference_predict(schema, updated, q)] for q in queries]
    result = he("train", "--system", str(system), "--mu", mu.address, "--algorithm", "dt")
    assert result.returncode == 0, result.stderr
    assert "dt is up to date" in result.stderr and "90 records from 3 owner(s)" in result.stderr


def test_dt_su_killed_mid_training_then_resumes(system, tmp_path):
    """Priv-DT: SU dies during level 1; MU keeps level 0 in its checkpoint and the rerun resumes from there."""
    from twofold.he.models import dt

    root = system.parent
    su, mu, port = dying_su_and_mu(system, tmp_path / "state", 24)
    try:
        for owner in ("olga", "omar"):
            result = he("upload", "--system", str(system), "--mu", mu.address, "--owner", owner,
                        str(root / f"{owner}.csv"), "--label", "label", "--algorithm", "dt")
            assert result.returncode == 0, result.stderr
        result = he("train", "--system", str(system), "--mu", mu.address, "--algorithm", "dt")
        assert result.returncode == 9
        assert "SU failed during training" in result.stderr and "(1 of 2 levels): rerun train" in result.stderr
        assert (tmp_path / "state" / "checkpoints" / "dt.msgpack").exists()
        su.proc.wait(10)
        su = Server(system, "su", port)
        result = he("train", "--system", str(system), "--mu", mu.address, "--algorithm", "dt")
        assert result.returncode == 0, result.stderr
        assert "(resumed)" in result.stderr
        assert not (tmp_path / "state" / "checkpoints" / "dt.msgpack").exists()
        result = he("predict", "--system", str(system), "--mu", mu.address, "--client", "alice", "--algorithm", "dt",
                    str(root / "queries.csv"), "--label", "label")
        assert result.returncode == 0, result.stderr
        schema, tree, queries = _dt_reference(system, ("olga", "omar"))
        assert result.stdout.split() == [schema.classes[dt.reference_predict(schema, tree, q)] for q in queries]
    finally:
        mu.stop()
        su.stop()
