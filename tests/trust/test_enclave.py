"""The enclave started from the CLI: attests, opens allowed datasets only, survives bad input."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import msgpack
import pytest

from twofold.crypto.pme import key_material_name
from twofold.enclave.measure import PACKAGE_ROOT, current_measurement
from twofold.errors import AttestationError, IntegrityError, ProtocolError, ServiceError
from twofold.services import start_enclave
from twofold.spark.enclave_client import EnclaveClient


def _load(client, dataset, index):
    entry = dataset.files[index]
    return client.call("load_partition", dataset_id=dataset.dataset_id, index=index,
                       data=(dataset.path / entry.name).read_bytes(),
                       key_material=(dataset.path / key_material_name(entry.name)).read_bytes())


def test_enclave_opens_an_allowed_dataset(enclave, datasets):
    dataset = datasets["allowed"]
    with EnclaveClient(enclave.address) as client:
        info = client.call("info")
        assert info["backend"] == "simulation" and len(info["measurement"]) == 64
        opened = client.call("open_dataset", manifest=(dataset.path / "manifest.json").read_bytes())
        assert opened == {"dataset_id": dataset.dataset_id, "num_files": 2, "num_rows": 4}
        assert [_load(client, dataset, i)["rows"] for i in range(2)] == [2, 2]
        assert client.call("partition_cached", dataset_id=dataset.dataset_id, index=1) == {"cached": True}
        assert client.call("info")["cache"]["partitions"] == 2
        assert client.call("close_dataset", dataset_id=dataset.dataset_id) == {"evicted": 2}
    log = enclave.log_text()
    assert "SIMULATION" in log and "SECRETVALUE" not in log


def test_enclave_is_denied_a_dataset_outside_its_policy(enclave, broker, datasets):
    with EnclaveClient(enclave.address) as client, pytest.raises(AttestationError, match="not allowed"):
        client.call("open_dataset", manifest=(datasets["other"].path / "manifest.json").read_bytes())
    assert any(d["dataset"] == datasets["other"].dataset_id for d in broker.denials())


def test_tampered_partition_is_an_integrity_error(enclave, datasets):
    dataset = datasets["allowed"]
    with EnclaveClient(enclave.address) as client:
        client.call("open_dataset", manifest=(dataset.path / "manifest.json").read_bytes())
        data = bytearray((dataset.path / dataset.files[0].name).read_bytes())
        data[100] ^= 1
        with pytest.raises(IntegrityError):
            client.call("load_partition", dataset_id=dataset.dataset_id, index=0, data=bytes(data),
                        key_material=(dataset.path / key_material_name(dataset.files[0].name)).read_bytes())
        swapped = (dataset.path / dataset.files[1].name).read_bytes()
        with pytest.raises(IntegrityError):
            client.call("load_partition", dataset_id=dataset.dataset_id, index=0, data=swapped,
                        key_material=(dataset.path / key_material_name(dataset.files[1].name)).read_bytes())


def _patched_copy(tmp_path):
    copy = tmp_path / "patched"
    shutil.copytree(PACKAGE_ROOT, copy / "twofold", ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "twofold" / "enclave" / "cache.py"
    target.write_text(target.read_text() + "\n# a backdoor would go here\n")
    return copy


def test_modified_trusted_code_is_denied(broker, tmp_path):
    """Code that differs from the measured TCB attests with another measurement and gets no keys."""
    copy = _patched_copy(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from twofold.enclave.__main__ import main; "
            "sys.exit(main(sys.argv[2:]))")
    run = subprocess.run([sys.executable, "-I", "-B", "-c", code, str(copy), "serve", "--socket",
                          str(tmp_path / "patched.sock"), "--kbs", broker.url, "--broker-identity",
                          str(broker.identity_path), "--backend", "simulation"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "not allowed by the policy" in run.stderr
    assert any("not allowed by the policy" in d["reason"] for d in broker.denials())


def test_untrusted_environment_does_not_reach_the_enclave(broker, tmp_path, monkeypatch):
    """The host's PYTHONPATH (a patched copy), proxies and CA bundle are not inherited: the enclave runs the
    installed, measured code in a clean environment, isolated (-I) and without bytecode caches."""
    copy = _patched_copy(tmp_path)
    for name, value in {"PYTHONPATH": str(copy), "https_proxy": "http://127.0.0.1:9", "SSL_CERT_FILE": "/dev/null",
                        "TWOFOLD_PASSPHRASE": "owner secret"}.items():
        monkeypatch.setenv(name, value)
    process = start_enclave(tmp_path / "clean.sock", broker.url, broker.identity_path, log_path=tmp_path / "c.log")
    try:
        with EnclaveClient(process.address) as client:
            assert client.call("info")["measurement"] == current_measurement()
        with open(f"/proc/{process.pid}/environ", "rb") as handle:
            names = {entry.split(b"=", 1)[0].decode() for entry in handle.read().split(b"\0") if entry}
        assert names <= {"PATH", "LANG", "HOME", "TWOFOLD_HOME", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                         "MKL_NUM_THREADS"}, names
        with open(f"/proc/{process.pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
        assert b"-I" in argv and b"-B" in argv and b"twofold.enclave" in argv
    finally:
        process.stop()


def test_enclave_survives_kbs_restart(enclave, broker, datasets):
    dataset = datasets["allowed"]
    port = broker.port
    with EnclaveClient(enclave.address) as client:
        client.call("open_dataset", manifest=(dataset.path / "manifest.json").read_bytes())
        broker.process.stop()
        broker.start(port=port)
        client.call("open_dataset", manifest=(dataset.path / "manifest.json").read_bytes())
        assert _load(client, dataset, 0)["rows"] == 2
        assert client.call("info")["attestations"] == 2


def _raw_exchange(path, payload: bytes) -> dict | None:
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(str(path))
        raw.sendall(payload)
        header = raw.recv(4)
        if len(header) < 4:
            return None
        (length,) = struct.unpack(">I", header)
        body = b""
        while len(body) < length:
            body += raw.recv(length - len(body))
        return msgpack.unpackb(body)


def _frame(message) -> bytes:
    payload = msgpack.packb(message) if not isinstance(message, bytes) else message
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("payload", [
    _frame(b"\xc1\xc1 not msgpack"),
    _frame([1, 2, 3]),
    _frame({"v": 99, "id": 1, "call": "info", "args": {}}),
    _frame({"v": 1, "id": 1, "call": "no_such_call", "args": {}}),
    _frame({"v": 1, "id": 1, "call": "open_dataset", "args": {"manifest": "not bytes"}}),
    _frame({"v": 1, "id": 1, "call": "open_dataset", "args": {}}),
    _frame({"v": 1, "id": 1, "call": "info", "args": {"extra": 1}}),
    _frame({"v": 1, "id": 1, "call": "load_partition", "args": {"dataset_id": "ds-x", "index": "0", "data": b"",
                                                                "key_material": b""}}),
    _frame({"v": 1, "id": 1, "call": "open_dataset", "args": {"manifest": b"{not json"}}),
    struct.pack(">I", 0xFFFFFFFF) + b"x",
])
def test_malformed_ecalls_are_rejected_without_crashing(enclave, payload):
    reply = _raw_exchange(enclave.address, payload)
    if reply is not None:
        assert reply["ok"] is False and reply["error"]["code"] in {"protocol", "input"}, reply
    with EnclaveClient(enclave.address) as client:
        assert client.call("info")["backend"] == "simulation"
    assert enclave.alive()


def test_client_maps_errors_to_types(enclave):
    with EnclaveClient(enclave.address) as client, pytest.raises(ProtocolError, match="unknown ecall"):
        client.call("nope")


def test_concurrent_clients_are_served_correctly(enclave, datasets):
    dataset = datasets["allowed"]
    manifest = (dataset.path / "manifest.json").read_bytes()

    def worker(i):
        with EnclaveClient(enclave.address) as client:
            client.call("open_dataset", manifest=manifest)
            return [_load(client, dataset, (i + k) % 2)["rows"] for k in range(4)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(worker, range(16))) == [[2, 2, 2, 2]] * 16


def test_enclave_start_fails_cleanly_without_a_broker(home, keystore, tmp_path):
    identity = tmp_path / "identity.json"
    identity.write_text(keystore.broker_identity().to_json())
    with pytest.raises(ServiceError, match="unreachable"):
        start_enclave(tmp_path / "x.sock", "http://127.0.0.1:9", identity, log_path=tmp_path / "x.log")


def test_enclave_never_receives_the_passphrase(enclave):
    with open(f"/proc/{enclave.pid}/environ", "rb") as handle:
        environ = handle.read().split(b"\0")
    assert not any(e.startswith(b"TWOFOLD_PASSPHRASE=") and len(e) > len(b"TWOFOLD_PASSPHRASE=") for e in environ)


def test_enclave_reads_partitions_from_storage_and_checks_them(enclave, datasets, tmp_path):
    dataset = datasets["allowed"]
    copy = tmp_path / "copy"
    shutil.copytree(dataset.path, copy)
    with EnclaveClient(enclave.address) as client:
        client.call("open_dataset", manifest=(copy / "manifest.json").read_bytes())
        assert client.call("load_partition_from", dataset_id=dataset.dataset_id, index=0,
                           directory=str(copy)) == {"rows": 2}
        part = copy / dataset.files[1].name
        data = bytearray(part.read_bytes())
        data[len(data) // 3] ^= 0x10
        part.write_bytes(bytes(data))
        with pytest.raises(IntegrityError):
            client.call("load_partition_from", dataset_id=dataset.dataset_id, index=1, directory=str(copy))
        with pytest.raises(IntegrityError):  # a directory without the files
            client.call("load_partition_from", dataset_id=dataset.dataset_id, index=1, directory=str(tmp_path))
