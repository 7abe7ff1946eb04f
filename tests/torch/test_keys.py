"""The training process gets the data key from a key broker (started from the CLI) after attestation."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from twofold.enclave.broker_client import BrokerAddress  # noqa: E402
from twofold.enclave.measure import current_measurement  # noqa: E402
from twofold.errors import AttestationError  # noqa: E402
from twofold.kbs.authoring import write_policy  # noqa: E402
from twofold.services import start_kbs  # noqa: E402
from twofold.torch import DeviceKeyProvider, EncryptedTensorDataset, training_measurement  # noqa: E402
from twofold.torch.measure import training_files  # noqa: E402

from ..conftest import run_cli  # noqa: E402


def test_training_measurement_covers_the_key_and_plaintext_code():
    names = {p.name for p in training_files()}
    assert {"device.py", "dataset.py", "keys.py", "chacha20_tensor.py", "tensors.py", "errors.py"} <= names
    assert training_measurement() == training_measurement() != current_measurement()


@pytest.fixture
def broker(home, keystore, dataset, tmp_path):
    started = []

    def start(measurement: str, datasets: list[str]):
        work = tmp_path / f"kbs{len(started)}"
        work.mkdir()
        write_policy(work / "policy.json", datasets, measurement=measurement)
        started.append(start_kbs(keystore.directory, work / "policy.json", work / "audit.jsonl",
                                 log_path=work / "kbs.log"))
        return started[-1]

    yield start
    for process in started:
        process.stop()
        assert not process.alive()


def test_key_released_to_attested_training_process(broker, dataset, keystore, arrays):
    kbs = broker(training_measurement(), [dataset.dataset_id])
    keys = DeviceKeyProvider(BrokerAddress(kbs.address, keystore.broker_identity().to_json()))
    keys.attest()
    ds = EncryptedTensorDataset(dataset.path, keys, "cpu")
    assert np.array_equal(ds.tensors[0].numpy(), arrays["x"])
    audit = [json.loads(line) for line in (kbs.log_path.parent / "audit.jsonl").read_text().splitlines()]
    assert any(e["event"] == "grant" and e.get("dataset") == dataset.dataset_id for e in audit)


def test_key_denied_to_other_measurements_and_datasets(broker, dataset, keystore, arrays, tmp_path):
    identity = keystore.broker_identity().to_json()
    kbs = broker(current_measurement(), [dataset.dataset_id])  # the enclave's TCB, not the training code
    with pytest.raises(AttestationError):
        EncryptedTensorDataset(dataset.path, DeviceKeyProvider(BrokerAddress(kbs.address, identity)), "cpu")
    kbs2 = broker(training_measurement(), ["ds-0123456789abcdef"])  # attests, but this dataset is not allowed
    with pytest.raises(AttestationError):
        EncryptedTensorDataset(dataset.path, DeviceKeyProvider(BrokerAddress(kbs2.address, identity)), "cpu")


def test_cli_encrypt_tensors_npy_npz_parquet(keystore, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((50, 4, 2)).astype(np.float32), rng.integers(0, 3, 50)
    np.save(tmp_path / "features.npy", x)
    np.savez(tmp_path / "more.npz", labels=y, weights=rng.random(50))
    table = pa.table({"img": pa.array(x.reshape(50, 4, 2).tolist()), "label": y})
    pq.write_table(table, tmp_path / "t.parquet")
    for inputs, expect in ((["features.npy", "more.npz"], {"features": x, "labels": y}),
                           (["t.parquet"], {"img": x, "label": y})):
        out = tmp_path / f"out-{inputs[0]}"
        done = run_cli("encrypt-tensors", *[str(tmp_path / i) for i in inputs], "--out", str(out),
                       "--keystore", str(keystore.directory), "--segment-bytes", "128")
        assert done.returncode == 0, done.stderr
        ds = EncryptedTensorDataset(out, keystore)
        for name, value in expect.items():
            got = ds.tensors[ds.names.index(name)].numpy()
            assert np.allclose(got, value) and got.shape == value.shape
    bad = run_cli("encrypt-tensors", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "out-t.parquet"),
                  "--keystore", str(keystore.directory))
    assert bad.returncode != 0 and "already exists" in bad.stderr and "Traceback" not in bad.stderr
