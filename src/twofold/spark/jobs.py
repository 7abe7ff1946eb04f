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

from twofold.crypto.manifest import Manifest
from twofold.data.models import ModelFile, seal_model_file
from twofold.data.tabular import EncryptedDataset, read_manifest
from twofold.enclave.broker_client import BrokerAddress
from twofold.errors import ConfigError
from twofold.keys.wrapping import KeyWrapper
from twofold.spark import catalog
from twofold.spark.files import encrypted_files, numeric_columns
from twofold.spark.host_enclave import EnclaveConfig
from twofold.spark.predictions import COMPONENT_PREFIX, open_predictions, prediction_table
from twofold.spark.whole import attested_session, read_encrypted

MLLIB_COMPONENTS = "pca"  # the vector column of MLlib's PCA models, as whole-mode model files store them


@dataclass
class TrainResult:
    model: ModelFile
    passes: int
    weights: dict[str, Any] | None  # plaintext weights where the driver legitimately holds them


def feature_columns(manifest: Manifest, label: str | None, features: list[str] | None) -> tuple[list[str], str]:
    """The feature columns and the label of a job: as given, or the dataset's label and other numeric columns."""
    label = label if label is not None else (manifest.label or "")
    return (features or numeric_columns(manifest, label)), label


def train(spark: Any, path: Path, algorithm: str, mode: str, release: str, enclave: EnclaveConfig,
          params: dict[str, Any], label: str | None = None, features: list[str] | None = None,
          progress: Callable[[int], None] | None = None) -> TrainResult:
    """Fit ``algorithm`` on an encrypted dataset and return the sealed model."""
    spec = catalog.get(algorithm)
    params = spec.check(params)
    manifest = read_manifest(Path(path))  # once for the job: the stages below are given it
    columns, label = feature_columns(manifest, label, features)
    if spec.uses_label and not label:
        raise ConfigError(f"{algorithm} needs a label column: pass --label")
    if mode == "partitioned":
        estimator = spec.partitioned_class()(release=release, enclaveSocket=enclave.socket, kbsUrl=enclave.kbs_url,
                                             brokerIdentity=enclave.broker_identity, inputCols=columns,
                                             **({"labelCol": label} if spec.uses_label else {}), **params)
        if progress:
            estimator.setProgress(progress)
        model = estimator.setManifest(manifest).fit(encrypted_files(spark, path, manifest))
        return TrainResult(model.model_file, model.passes, model.weights if model.hasWeights else None)
    if mode != "whole":
        raise ConfigError("mode must be 'whole' or 'partitioned'")
    return _train_whole(spark, Path(path), manifest, spec, enclave.broker, params, columns, label)


def mllib_estimator(algorithm: str, params: dict[str, Any], label: str) -> Any:
    """The vanilla pyspark.ml estimator for an algorithm (features in a ``features`` vector column)."""
    spec = catalog.get(algorithm)
    columns = {"labelCol": label} if spec.uses_label else {}
    if spec.output == "components":
        columns = {"inputCol": "features", "outputCol": MLLIB_COMPONENTS}
    return spec.mllib_class()(**columns, **params)


def assemble(frame: Any, columns: list[str]) -> Any:
    from pyspark.ml.feature import VectorAssembler

    return VectorAssembler(inputCols=columns, outputCol="features").transform(frame)


def _private_tmp() -> str:
    """A private directory in memory (/dev/shm) where available, for MLlib's model writer."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None  # noqa: S108
    return tempfile.mkdtemp(prefix="twofold-model-", dir=base)


def _train_whole(spark: Any, path: Path, manifest: Manifest, spec: catalog.Algorithm, broker: BrokerAddress,
                 params: dict[str, Any], columns: list[str], label: str) -> TrainResult:
    frame = read_encrypted(spark, path, broker, columns=[label] if label else [], features=columns,
                           manifest=manifest).cache()
    model = mllib_estimator(spec.name, params, label).fit(frame)
    frame.unpersist()
    tmp = _private_tmp()
    try:
        model.write().overwrite().save(os.path.join(tmp, "model"))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(os.path.join(tmp, "model"), arcname="model")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    passes = int(model.summary.totalIterations) if getattr(model, "hasSummary", False) and \
        hasattr(model.summary, "totalIterations") else 0
    unsealed = ModelFile(spec.name, "whole", "whole", manifest.dataset_id, "m-" + secrets.token_hex(8),
                         manifest.wrapped_mac_key, columns, label, params, b"", payload="spark-ml-tar")
    return TrainResult(seal_model_file(attested_session(broker), unsealed, buffer.getvalue()), passes, None)


def predict(spark: Any, model: ModelFile, path: Path, enclave: EnclaveConfig, owner: KeyWrapper) -> pa.Table:
    """Predictions for an encrypted dataset, opened by the owner (label column kept when present)."""
    manifest = read_manifest(Path(path))  # once for the job
    if model.mode == "partitioned":
        from twofold.spark.model import PartitionedModel

        stage = PartitionedModel(model).setEnclave(enclave).setManifest(manifest)
        return open_predictions(stage.transform(encrypted_files(spark, path, manifest)), owner, manifest=manifest)
    return _predict_whole(spark, model, Path(path), enclave.broker, manifest)


def _predict_whole(spark: Any, model: ModelFile, path: Path, broker: BrokerAddress, manifest: Manifest) -> pa.Table:
    spec = catalog.get(model.algorithm)
    label = manifest.label or ""
    tmp = _private_tmp()
    try:
        with tarfile.open(fileobj=io.BytesIO(model.open(attested_session(broker))), mode="r") as archive:
            archive.extractall(tmp, filter="data")
        fitted = spec.mllib_model_class().load(os.path.join(tmp, "model"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keep = [label] if label else []
    out = fitted.transform(read_encrypted(spark, path, broker, columns=keep, features=model.columns,
                                          manifest=manifest))
    if spec.output == "components":
        from pyspark.ml.functions import vector_to_array

        table = out.select(*keep, vector_to_array(MLLIB_COMPONENTS).alias("values")).toArrow()
        values = np.array(table.column("values").to_pylist()) if table.num_rows else np.empty((0, 0))
        return prediction_table([{"prediction": values, **({"label": table.column(label).to_numpy()} if label
                                                          else {})}], label)
    table = out.select(*keep, "prediction").toArrow()
    return table.cast(pa.schema([(f.name, pa.float64()) for f in table.schema]))


def write_predictions(table: pa.Table, out: Path, owner: KeyWrapper, rows_per_file: int = 100_000) -> EncryptedDataset:
    """Predictions are derived from sensitive data: store them as an encrypted dataset of the owner."""
    label = next((c for c in table.column_names if c != "prediction" and not c.startswith(COMPONENT_PREFIX)), None)
    return EncryptedDataset.write(table, out, owner, label=label, rows_per_file=rows_per_file)
