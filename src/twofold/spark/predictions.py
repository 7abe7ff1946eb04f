"""The owner's side of predictions: open what the enclave sealed, and lay predictions out as a table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from twofold.crypto import sealing
from twofold.crypto.mac import mac_context
from twofold.crypto.manifest import Manifest
from twofold.errors import ConfigError
from twofold.keys.wrapping import KeyWrapper
from twofold.spark.files import manifest_of

COMPONENT_PREFIX = "pca_"  # components arrive as columns pca_0, pca_1, ...


def prediction_table(parts: list[dict[str, np.ndarray]], label: str) -> pa.Table:
    """Per-partition ``prediction`` arrays (and ``label``, when kept) as one table, in partition order."""
    prediction = np.concatenate([p["prediction"] for p in parts]) if parts else np.empty(0)
    columns: dict[str, Any] = {}
    if label and parts and "label" in parts[0]:
        columns[label] = np.concatenate([p["label"] for p in parts])
    if prediction.ndim == 2:  # components: one column each
        for j in range(prediction.shape[1]):
            columns[f"{COMPONENT_PREFIX}{j}"] = prediction[:, j]
    else:
        columns["prediction"] = prediction
    return pa.table(columns)


def open_predictions(frame: Any, owner: KeyWrapper, prediction_col: str = "prediction",
                     manifest: Manifest | None = None) -> pa.Table:
    """Open the sealed predictions a partitioned model's ``transform`` gave, with the owner's keystore.

    ``frame`` is that transform's output (one row per encrypted file); the table holds the dataset's label, when
    it has one, and the predictions, in dataset order. ``manifest``: the dataset's, if the caller has read it.
    """
    rows = sorted(frame.select("path", "dataset_id", "index", prediction_col).collect(), key=lambda r: r["index"])
    if not rows or len({(r["path"], r["dataset_id"]) for r in rows}) != 1:
        raise ConfigError("open the predictions of one dataset at a time")
    manifest = manifest_of(rows[0]["path"], rows[0]["dataset_id"], manifest)
    mac_key = owner.unwrap(manifest.wrapped_mac_key, mac_context(manifest.dataset_id))
    sealed = [(r["index"], r[prediction_col]["job"], bytes(r[prediction_col]["sealed"])) for r in rows]
    keys = {job: sealing.job_key(mac_key, job) for _, job, _ in sealed}
    parts = [sealing.unpack(sealing.open_(keys[job], blob, sealing.predictions_aad(job, i))) for i, job, blob in sealed]
    return prediction_table(parts, manifest.label or "")
