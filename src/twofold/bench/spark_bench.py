"""``twofold bench spark``: vanilla MLlib vs whole vs partitioned (statistics, sealed), in one run.

Vanilla fits ``pyspark.ml`` on a cached plaintext DataFrame (no handicap: same partitions, maxIter and tol).
Whole mode is timed from the encrypted dataset (decryption in executors, cache, fit). Partitioned modes are
timed from the encrypted dataset too (first pass loads and decrypts partitions into the enclave).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twofold.bench.common import machine
from twofold.crypto.kdf import Argon2Params
from twofold.data import EncryptedDataset
from twofold.enclave.kernels.base import algorithm as kernel
from twofold.keys.keystore import Keystore
from twofold.spark import jobs
from twofold.spark.embedded import job_services
from twofold.spark.files import encrypted_files
from twofold.spark.host_enclave import HostEnclave
from twofold.spark.session import get_spark
from twofold.spark.whole import read_encrypted

PASSPHRASE = "benchmark passphrase"
ALGORITHMS = ("logreg", "linreg", "kmeans", "naive_bayes", "pca")
PARAMS = {"logreg": {"maxIter": 100, "tol": 1e-6}, "linreg": {}, "kmeans": {"k": 5, "maxIter": 20, "tol": 1e-4,
          "seed": 11}, "naive_bayes": {"modelType": "gaussian"}, "pca": {"k": 5}}
METRICS = {"logreg": "accuracy", "linreg": "r2", "kmeans": "cost", "naive_bayes": "accuracy",
           "pca": "explained_variance"}


def synthetic(rows: int, cols: int, seed: int = 1) -> dict[str, pa.Table]:
    """HiBench-style tables: dense gaussian features with a linear signal, and gaussian blobs."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, cols))
    w = rng.standard_normal(cols)
    score = X @ w / np.sqrt(cols)
    centers = rng.standard_normal((5, cols)) * 3
    blobs = centers[rng.integers(0, 5, rows)] + rng.standard_normal((rows, cols))
    features = {f"f{i}": X[:, i] for i in range(cols)}
    return {
        "classification": pa.table({**features, "label": (score + 0.5 * rng.standard_normal(rows) > 0).astype(float)}),
        "regression": pa.table({**features, "label": score + 0.3 * rng.standard_normal(rows)}),
        "blobs": pa.table({f"f{i}": blobs[:, i] for i in range(cols)}),
    }


DATASET_OF = {"logreg": "classification", "naive_bayes": "classification", "linreg": "regression",
              "pca": "regression", "kmeans": "blobs"}


def _numpy(table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
    names = [c for c in table.column_names if c != "label"]
    X = np.column_stack([table.column(c).to_numpy() for c in names])
    return X, table.column("label").to_numpy() if "label" in table.column_names else None


def metric_of_weights(algorithm: str, weights: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray | None) -> float:
    """The quality measure of a partitioned model, computed by the owner on the plaintext."""
    if algorithm == "pca":
        return float(np.sum(weights["explainedVariance"]))
    prediction = kernel(algorithm).predict(weights, X, PARAMS[algorithm])
    if algorithm in ("logreg", "naive_bayes"):
        return float(np.mean(prediction == y))
    if algorithm == "linreg":
        return float(1 - np.sum((y - prediction) ** 2) / np.sum((y - y.mean()) ** 2))
    return float(weights["cost"][0])


def metric_of_mllib(algorithm: str, model: Any, frame: Any) -> float:
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    if algorithm == "pca":
        return float(np.sum(model.explainedVariance.toArray()))
    if algorithm == "linreg":
        return float(model.summary.r2)
    if algorithm == "kmeans":
        return float(model.summary.trainingCost)
    return float(MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(frame)))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def run(rows: int, cols: int, algorithms: list[str], partitions: int | None = None, master: str | None = None,
        log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    partitions = partitions or 8
    rows_per_file = -(-rows // partitions)
    tables = synthetic(rows, cols)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="twofold-bench-spark-") as tmp:
        root = Path(tmp)
        store = Keystore.create(root / "ks", PASSPHRASE, Argon2Params(memory_kib=8192, iterations=1))
        needed = sorted({DATASET_OF[a] for a in algorithms})
        encrypted, plain = {}, {}
        for name in needed:
            encrypted[name] = EncryptedDataset.write(tables[name], root / f"{name}.enc", store,
                                                     label="label" if "label" in tables[name].column_names else None,
                                                     rows_per_file=rows_per_file)
            plain[name] = root / f"{name}.parquet"
            plain[name].mkdir()
            for index, start in enumerate(range(0, rows, rows_per_file)):
                pq.write_table(tables[name].slice(start, rows_per_file), plain[name] / f"part-{index:05d}.parquet")
        log(f"encrypted {len(needed)} synthetic tables of {rows} x {cols} into {partitions} files each")
        with job_services([str(d.path) for d in encrypted.values()], keystore_dir=root / "ks", passphrase=PASSPHRASE,
                          cache_mib=16384) as services:
            spark = get_spark(master, "twofold-bench")
            for algorithm in algorithms:
                results += _bench_algorithm(spark, services, algorithm, tables, encrypted, plain, partitions, log)
    for row in results:
        vanilla = next(r for r in results if r["algorithm"] == row["algorithm"] and r["mode"] == "vanilla")
        row["ratio_to_vanilla"] = row["seconds"] / vanilla["seconds"]
        # Context only: the same job when vanilla too must first load its (plaintext) Parquet into a cached frame.
        row["ratio_to_vanilla_with_load"] = row["seconds"] / (vanilla["seconds"] + vanilla["load_seconds"])
    return {"benchmark": "spark", "rows": rows, "cols": cols, "partitions": partitions, "enclave": "simulation",
            "results": results, "machine": machine()}


def _bench_algorithm(spark: Any, services: Any, algorithm: str, tables: dict, encrypted: dict, plain: dict,
                     partitions: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    name = DATASET_OF[algorithm]
    label = "label" if algorithm in ("logreg", "naive_bayes", "linreg") else ""
    columns = [c for c in tables[name].column_names if c != "label"]
    params = PARAMS[algorithm]
    X, y = _numpy(tables[name])
    out = []

    def record(mode: str, seconds: float, value: float, **extra: Any) -> None:
        out.append({"algorithm": algorithm, "mode": mode, "seconds": seconds, "metric_name": METRICS[algorithm],
                    "metric": value, **extra})
        log(f"{algorithm:<12} {mode:<24} {seconds:7.2f} s   {METRICS[algorithm]} {value:.6g}")

    # One partition per file, in file order: the same layout whole and partitioned mode see.
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(p.stat().st_size for p in plain[name].iterdir())))
    spark.conf.set("spark.sql.files.openCostInBytes", str(1 << 30))
    def load_plain() -> Any:
        frame = jobs.assemble(spark.read.parquet(*sorted(str(p) for p in plain[name].iterdir())), columns).select(
            "features", *([label] if label else []))
        if frame.rdd.getNumPartitions() != partitions:
            frame = frame.repartition(partitions)
        frame = frame.cache()
        frame.count()
        return frame

    load_seconds, frame = _timed(load_plain)  # reported beside, never added to the baseline's fit time
    seconds, model = _timed(lambda: jobs.mllib_estimator(algorithm, params, label or "label").fit(frame))
    record("vanilla", seconds, metric_of_mllib(algorithm, model, frame), load_seconds=load_seconds)
    frame.unpersist()

    def whole() -> tuple[Any, Any]:
        decrypted = jobs.assemble(read_encrypted(spark, encrypted[name].path, services.kbs_url), columns).select(
            "features", *([label] if label else [])).cache()
        decrypted.count()
        return jobs.mllib_estimator(algorithm, params, label or "label").fit(decrypted), decrypted

    seconds, (model, decrypted) = _timed(whole)
    record("whole", seconds, metric_of_mllib(algorithm, model, decrypted))
    decrypted.unpersist()

    files = encrypted_files(spark, encrypted[name].path)
    host = HostEnclave(services.enclave)
    for release in ("statistics", "sealed"):
        host.call("close_dataset", dataset_id=encrypted[name].dataset_id)  # each run decrypts from scratch
        estimator = jobs.PARTITIONED[algorithm](release=release, enclaveSocket=services.enclave.socket,
                                                kbsUrl=services.kbs_url, inputCols=columns,
                                                **({"labelCol": label} if label else {}), **params)
        seconds, fitted = _timed(lambda e=estimator: e.fit(files))
        weights = fitted.model_file.open_arrays(encrypted[name]._wrapper)
        timings = {f"{k}_seconds": v for k, v in fitted.timings.items()}
        record(f"partitioned-{release}", seconds, metric_of_weights(algorithm, weights, X, y), passes=fitted.passes,
               **timings)
    return out
