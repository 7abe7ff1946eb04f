"""Train and predict jobs over encrypted datasets, in whole or partitioned mode (used by the CLI and the demo)."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from twofold.crypto import manifest as mf
from twofold.data.models import ModelFile, seal_payload
from twofold.data.tabular import EncryptedDataset, read_manifest
from twofold.enclave.kernels import arrays, jobs
from twofold.errors import ConfigError
from twofold.keys.wrapping import KeyWrapper
from twofold.spark import estimators, partitioned
from twofold.spark.files import encrypted_files
from twofold.spark.host_enclave import EnclaveConfig
from twofold.spark.whole import attested_session, read_encrypted

ALGORITHMS = ("logreg", "linreg", "kmeans", "naive_bayes", "pca")
PARTITIONED = {"logreg": estimators.LogisticRegression, "linreg": estimators.LinearRegression,
               "kmeans": estimators.KMeans, "naive_bayes": estimators.NaiveBayes, "pca": estimators.PCA}


@dataclass
class TrainResult:
    model: ModelFile
    passes: int
    weights: dict[str, Any] | None  # plaintext weights where the driver legitimately holds them


def feature_columns(path: Path, label: str | None, features: list[str] | None) -> tuple[list[str], str]:
    body = read_manifest(Path(path))["manifest"]
    label = label if label is not None else (body["label"] or "")
    if features:
        return features, label
    numeric = ("int", "uint", "float", "double", "bool", "decimal")
    return [c["name"] for c in body["schema"]["columns"] if c["name"] != label
            and str(c["type"]).startswith(numeric)], label


def train(spark: Any, path: Path, algorithm: str, mode: str, release: str, enclave: EnclaveConfig,
          params: dict[str, Any], label: str | None = None, features: list[str] | None = None,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Fit ``algorithm`` on an encrypted dataset and return the sealed model."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algorithm!r}: choose from {', '.join(ALGORITHMS)}")
    columns, label = feature_columns(path, label, features)
    if mode == "partitioned":
        estimator = PARTITIONED[algorithm](release=release, enclaveSocket=enclave.socket, kbsUrl=enclave.kbs_url,
                                           inputCols=columns, **_label_param(algorithm, label), **params)
        if progress:
            estimator.setProgress(progress)
        model = estimator.fit(encrypted_files(spark, path))
        return TrainResult(model.model_file, model.passes, model._weights)
    if mode != "whole":
        raise ConfigError("mode must be 'whole' or 'partitioned'")
    return _train_whole(spark, Path(path), algorithm, enclave.kbs_url, params, columns, label)


def _label_param(algorithm: str, label: str) -> dict[str, str]:
    from twofold.enclave.kernels.base import algorithm as get

    if get(algorithm).uses_label:
        if not label:
            raise ConfigError(f"{algorithm} needs a label column: pass --label")
        return {"labelCol": label}
    return {}


def mllib_estimator(algorithm: str, params: dict[str, Any], label: str) -> Any:
    """The vanilla pyspark.ml estimator for an algorithm (features in a ``features`` vector column)."""
    from pyspark.ml import classification, clustering, feature, regression

    if algorithm == "logreg":
        return classification.LogisticRegression(labelCol=label, **params)
    if algorithm == "linreg":
        return regression.LinearRegression(labelCol=label, **params)
    if algorithm == "kmeans":
        return clustering.KMeans(**params)
    if algorithm == "naive_bayes":
        return classification.NaiveBayes(labelCol=label, **params)
    return feature.PCA(inputCol="features", outputCol="pca", **params)


def assemble(frame: Any, columns: list[str]) -> Any:
    from pyspark.ml.feature import VectorAssembler

    return VectorAssembler(inputCols=columns, outputCol="features").transform(frame)


def _private_tmp() -> str:
    """A private directory in memory (/dev/shm) where available, for MLlib's model writer."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None  # noqa: S108
    return tempfile.mkdtemp(prefix="twofold-model-", dir=base)


def _train_whole(spark: Any, path: Path, algorithm: str, kbs_url: str, params: dict[str, Any],
                 columns: list[str], label: str) -> TrainResult:
    frame = read_encrypted(spark, path, kbs_url, columns=[label] if label else [], features=columns).cache()
    model = mllib_estimator(algorithm, params, label).fit(frame)
    frame.unpersist()
    tmp = _private_tmp()
    try:
        model.write().overwrite().save(os.path.join(tmp, "model"))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(os.path.join(tmp, "model"), arcname="model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = read_manifest(path)
    dataset_id, mac_key = body["manifest"]["dataset_id"], body["keys"]["mac_key"]
    model_id = "m-" + secrets.token_hex(8)
    sealed = seal_payload(attested_session(kbs_url), dataset_id, mac_key, model_id, algorithm, buffer.getvalue())
    passes = int(model.summary.totalIterations) if getattr(model, "hasSummary", False) and \
        hasattr(model.summary, "totalIterations") else 0
    return TrainResult(ModelFile(algorithm, "whole", "whole", dataset_id, model_id, mac_key, columns, label, params,
                                 sealed, payload="spark-ml-tar"), passes, None)


def predict(spark: Any, model: ModelFile, path: Path, enclave: EnclaveConfig, owner: KeyWrapper) -> pa.Table:
    """Predictions for an encrypted dataset, opened by the owner (label column kept when present)."""
    columns = model.columns
    label = read_manifest(Path(path))["manifest"]["label"] or ""
    if model.mode == "partitioned":
        return _predict_partitioned(spark, model, Path(path), enclave, owner, columns, label)
    return _predict_whole(spark, model, Path(path), enclave.kbs_url, columns, label)


def _predict_partitioned(spark: Any, model: ModelFile, path: Path, enclave: EnclaveConfig, owner: KeyWrapper,
                         columns: list[str], label: str) -> pa.Table:
    doc = read_manifest(path)
    dataset_id = doc["manifest"]["dataset_id"]
    task = partitioned.Task(enclave, str(path.resolve()), dataset_id, model.algorithm, tuple(columns), label,
                            model.params, "sealed", partitioned.new_job())
    count = len(doc["manifest"]["files"])
    sealed = partitioned.predict(spark.sparkContext.parallelize(range(count), count), count, task,
                                 {"model_dataset_id": model.dataset_id, "model_mac_key": model.mac_key,
                                  "model_id": model.model_id, "model": model.sealed})
    key = jobs.job_key(owner.unwrap(doc["keys"]["mac_key"], mf.mac_context(dataset_id)), task.job)
    parts = [arrays.unpack(jobs.open_(key, blob, jobs.predictions_aad(task.job, index))) for index, blob in sealed]
    return _prediction_table(parts, label, model.algorithm)


def _prediction_table(parts: list[dict[str, np.ndarray]], label: str, algorithm: str) -> pa.Table:
    prediction = np.concatenate([p["prediction"] for p in parts]) if parts else np.empty(0)
    columns: dict[str, Any] = {}
    if label and parts and "label" in parts[0]:
        columns[label] = np.concatenate([p["label"] for p in parts])
    if prediction.ndim == 2:  # PCA: one column per component
        for j in range(prediction.shape[1]):
            columns[f"pca_{j}"] = prediction[:, j]
    else:
        columns["prediction"] = prediction
    return pa.table(columns)


def _predict_whole(spark: Any, model: ModelFile, path: Path, kbs_url: str, columns: list[str],
                   label: str) -> pa.Table:
    from pyspark.ml import classification, clustering, feature, regression

    classes = {"logreg": classification.LogisticRegressionModel, "linreg": regression.LinearRegressionModel,
               "kmeans": clustering.KMeansModel, "naive_bayes": classification.NaiveBayesModel,
               "pca": feature.PCAModel}
    tmp = _private_tmp()
    try:
        with tarfile.open(fileobj=io.BytesIO(model.open(attested_session(kbs_url))), mode="r") as archive:
            archive.extractall(tmp, filter="data")
        fitted = classes[model.algorithm].load(os.path.join(tmp, "model"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = fitted.transform(read_encrypted(spark, path, kbs_url, columns=[label] if label else [], features=columns))
    if model.algorithm == "pca":
        from pyspark.ml.functions import vector_to_array

        out = out.select(*([label] if label else []), vector_to_array("pca").alias("pca"))
        table = out.toArrow()
        values = np.array(table.column("pca").to_pylist()) if table.num_rows else np.empty((0, 0))
        parts = [{"prediction": values, **({"label": table.column(label).to_numpy()} if label else {})}]
        return _prediction_table(parts, label, "pca")
    selected = out.select(*([label] if label else []), "prediction")
    table = selected.toArrow()
    return table.cast(pa.schema([(f.name, pa.float64()) for f in table.schema]))


def write_predictions(table: pa.Table, out: Path, owner: KeyWrapper, rows_per_file: int = 100_000) -> EncryptedDataset:
    """Predictions are derived from sensitive data: store them as an encrypted dataset of the owner."""
    label = next((c for c in table.column_names if c not in ("prediction",) and not c.startswith("pca_")), None)
    return EncryptedDataset.write(table, out, owner, label=label, rows_per_file=rows_per_file)
