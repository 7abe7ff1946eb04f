"""One Spark session, key broker and enclave for all Spark tests (started from the CLI entry points)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from twofold.data import EncryptedDataset
from twofold.keys.keystore import Keystore

from ..conftest import FAST_KDF, PASSPHRASE


def _tables() -> dict[str, pa.Table]:
    rng = np.random.default_rng(42)
    n, d = 3000, 5
    X = rng.standard_normal((n, d))
    w = np.array([1.5, -2.0, 0.5, 0.0, 1.0])
    classification = (X @ w + 0.3 + rng.standard_normal(n) > 0).astype(np.int64)
    regression = X @ w + 2.0 + 0.5 * rng.standard_normal(n)
    centers = rng.standard_normal((4, d)) * 4
    blobs = centers[rng.integers(0, 4, n)] + rng.standard_normal((n, d))
    counts = rng.poisson(2.0, (n, d)).astype(np.float64)
    classes = rng.integers(0, 3, n)
    counts[classes == 1, 0] += 3
    counts[classes == 2, 1] += 3
    features = {f"f{i}": X[:, i] for i in range(d)}
    return {
        "classification": pa.table({**features, "label": classification}),
        "classification_b": pa.table({**{f"f{i}": rng.standard_normal(n) * 3 for i in range(d)},
                                      "label": rng.integers(0, 2, n)}),
        "regression": pa.table({**features, "label": regression}),
        "blobs": pa.table({f"f{i}": blobs[:, i] for i in range(d)}),
        "counts": pa.table({**{f"f{i}": counts[:, i] for i in range(d)}, "label": classes}),
    }


@pytest.fixture(scope="session")
def spark_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark")
    saved = {k: os.environ.get(k) for k in ("TWOFOLD_HOME", "TWOFOLD_ECALL_TRACE")}
    os.environ["TWOFOLD_HOME"] = str(root / "home")
    os.environ["TWOFOLD_ECALL_TRACE"] = str(root / "trace.jsonl")
    store = Keystore.create(root / "keystore", PASSPHRASE, FAST_KDF)
    datasets = {name: EncryptedDataset.write(table, root / name, store, label="label" if "label" in
                                             table.column_names else None, rows_per_file=800)
                for name, table in _tables().items()}
    from twofold.spark.embedded import job_services
    from twofold.spark.session import get_spark

    with job_services([str(d.path) for d in datasets.values()], mode="both",
                      keystore_dir=root / "keystore", passphrase=PASSPHRASE, cache_mib=512) as services:
        spark = get_spark("local[2,3]", "twofold-tests")  # 2 threads, a failed task is retried
        yield {"spark": spark, "services": services, "store": store, "datasets": datasets,
               "tables": _tables(), "root": root, "trace": root / "trace.jsonl"}
        spark.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def spark(spark_env):
    return spark_env["spark"]


@pytest.fixture
def owner(spark_env) -> Keystore:
    return Keystore.open(spark_env["store"].directory, PASSPHRASE)
